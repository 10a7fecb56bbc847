"""The repository's commands run from tests: as a user runs them (`python -m X` in a subprocess),
or in this process through `run_cli`, as `python -m X` calls `main`, which is much faster (no
fresh import of torch, Ray and open_clip) where a subprocess adds nothing to what is tested."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from storage_schemas.plumbing.errors import EXIT_USER_ERROR, run_cli

REPO = Path(__file__).resolve().parents[2]


def run_module(module: str, *args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python -m module args...` from the repository root, capturing output."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@dataclass
class CliRun:
    """A command's exit status and what it printed."""

    status: int
    out: str
    err: str

    @classmethod
    def of(cls, process: subprocess.CompletedProcess) -> CliRun:
        return cls(process.returncode, process.stdout, process.stderr)


def run_in_process(main: Callable[[list[str] | None], int | None], argv: list, capsys) -> CliRun:
    """`run_cli(main, argv)`, as `python -m X argv` runs it, in this process: a `UserError` is one
    line on stderr and exit status 2; what earlier steps of the test printed is left out."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run_cli(main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return CliRun(stop.value.code, out, err)


def assert_one_line_error(run: CliRun, *words: str) -> str:
    """Exit status 2, and stderr exactly one line, `error: ...`, holding each of `words`; returns it."""
    assert run.status == EXIT_USER_ERROR, (run.status, run.err[-2000:])
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.err[-2000:]
    assert all(w in lines[0] for w in words), (words, lines[0])
    return lines[0]
