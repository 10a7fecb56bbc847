"""The user pages (README.md, docs/) as a user meets them: every `bash` block runs as written, and
no page speaks of the project's history.

A `bash` block runs from the root of a scratch copy of the repository whose `out/` holds what
scripts/demo.sh makes (the sample corpus, tiny teachers, the store of jobs/sample.yaml with its
text table, a trained student's export), with the session's local Ray and moto S3 server (bucket
`samclip-demo`). Blocks that need a cluster, a GPU, real weights or hours are `sh` blocks.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support.commands import REPO
from support.services import S3_KEY, S3_SECRET, s3_environment
from support.training import PROBE

PAGES = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
BLOCK = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
DEMO_BUCKET = "samclip-demo"

# What a page must not say: user pages say what is true now.
HISTORY = {
    "an issue number": r"\b[Ii]ssues? #?\d+|(?<![\w/])#\d+\b",
    # seven to twelve hex digits with a letter and a digit among them, standing alone
    "a commit hash": r"(?<![\w./-])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,12}(?![\w.-])",
    "an earlier design": r"\b(before (this|the|that) change|previously|formerly)\b|\(was \d|\bwas ~",
    "a test run's timing": r"\bpassed in \d|\d+ passed\b",
}


def blocks(page: Path) -> list[tuple[str, str]]:
    """(language, text) of each fenced block of `page`, in order."""
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(page.read_text())]


def prose(page: Path) -> list[tuple[int, str]]:
    """(line number, line) of `page` outside fenced blocks."""
    out, fenced = [], False
    for no, line in enumerate(page.read_text().splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            out.append((no, line))
    return out


def test_the_pages_exist():
    names = {p.name for p in PAGES}
    expected = {
        "README.md",
        "store.md",
        "materialize.md",
        "student.md",
        "evaluation.md",
        "transfer-sets.md",
        "sweeps.md",
        "operations.md",
        "benchmarks.md",
        "scale-plan.md",
    }
    assert expected <= names, expected - names


def test_the_readme_is_short():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    assert [no for no, line in enumerate(lines, 1) if len(line) > 100] == []


@pytest.mark.parametrize("page", PAGES + [REPO / "CONTRIBUTING.md"], ids=lambda p: p.name)
def test_no_page_speaks_of_history(page):
    said = [
        f"{page.name}:{no}: {what}: {match.group(0)!r}"
        for no, line in prose(page)
        for what, pattern in HISTORY.items()
        for match in re.finditer(pattern, line)
    ]
    assert said == []


@pytest.mark.parametrize("page", PAGES + [REPO / "CONTRIBUTING.md"], ids=lambda p: p.name)
def test_links_between_pages_resolve(page):
    broken = [
        target
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text())
        if "://" not in target and not (page.parent / target).exists()
    ]
    assert broken == []


def test_the_history_patterns_catch_history():
    said = "see issue 34; fixed in fa7a73b; before this change it was slow (was 12 s); 235 passed in 24:53"
    caught = {what for what, pattern in HISTORY.items() if re.search(pattern, said)}
    assert caught == set(HISTORY)


RUNNABLE = [page for page in PAGES if any(lang == "bash" for lang, _ in blocks(page))]
RAN: set[str] = set()  # a block that several pages show (the README's are in the docs too) runs once
# The blocks of docs/materialize.md that make the demo's store and its text table, as written.
MAKE_STORE = (
    "samclip materialize jobs/sample.yaml --report out/materialize-report.json\n",
    "samclip text-targets jobs/sample.yaml --name sample --classes jobs/sample_classes.txt\n",
)


@pytest.fixture(scope="module")
def demo_copy(tmp_path_factory, sample_corpus, tiny_teachers, s3_endpoint) -> tuple[Path, dict]:
    """A scratch copy of the repository with the demo's out/, and the environment blocks run in."""
    import s3fs

    work = tmp_path_factory.mktemp("docs") / "repo"
    work.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in {"out", ".git"}:
            (work / entry.name).symlink_to(entry)
    out = work / "out"
    out.mkdir()
    (out / "sample").symlink_to(sample_corpus)
    (out / "teachers").symlink_to(Path(tiny_teachers["clip"]).parent)
    # Without RAY_ADDRESS: a job starts its own local Ray, whose workers resolve the job's relative
    # paths (out/sample/...) from the scratch copy, as the demo's do from the repository.
    env = {
        **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        **s3_environment(s3_endpoint),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    s3fs.S3FileSystem(key=S3_KEY, secret=S3_SECRET, endpoint_url=s3_endpoint).mkdir(DEMO_BUCKET)
    shown = [text for lang, text in blocks(REPO / "docs" / "materialize.md") if lang == "bash"]
    assert set(MAKE_STORE) <= set(shown), "docs/materialize.md no longer shows the blocks that make the demo's store"
    RAN.update(MAKE_STORE)  # made here, as the page shows: no page runs them again
    make_demo = f"""
        {MAKE_STORE[0]}
        {MAKE_STORE[1]}
        python student/train.py --config student/configs/tiny.yaml \
            --set "stages=[{PROBE % 4}]" --set data.workers=0 --set val_every=1000
    """
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", make_demo], cwd=work, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return work, env


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: p.name)
def test_every_bash_block_runs_as_written(page, demo_copy):
    work, env = demo_copy
    for text in [text for lang, text in blocks(page) if lang == "bash" and text not in RAN]:
        RAN.add(text)
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", text], cwd=work, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"{page.name}:\n{text}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
