"""`python -m student.evaluate suite --suite FILE.yaml --export DIR [--job JOB.yaml] --out DIR`:
a list of benchmarks, the student's heads and the teacher in one table.

    benchmarks:                                  # student/configs/eval/paper.yaml: Tables 1 and 2
      - {name: ImageNet, task: zeroshot-cls, dataset: imagenet, data: data/imagenet/val}
      - {name: ADE20k, task: semseg, dataset: ade20k, data: data/ADEChallengeData2016}

Each benchmark runs as `python -m student.evaluate TASK` runs it (its JSON under OUT/NAME/): the
student's CLIP head; for semseg also the SAM-head refinement (`refine`, Table 5); with --job, the
store's CLIP teacher, on the same data and class table. OUT/suite.json holds every figure,
OUT/suite.md the table: a row per (model, head), a column per benchmark (top-1 or mIoU, in %),
and the student's difference to its teacher where the teacher has the column.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from storage_schemas.plumbing.errors import ConfigError
from storage_schemas.plumbing.typed_config import FieldError, add_set_argument, load_config

METRIC = {"zeroshot-cls": "top1", "semseg": "miou", "semseg-refine": "miou"}
ROWS = (("student", "CLIP head"), ("student", "CLIP + SAM head"), ("teacher", "CLIP"))


@dataclass
class Benchmark:
    name: str  # the column's title, and OUT/NAME/
    task: str  # zeroshot-cls or semseg
    dataset: str  # a `--dataset` layout
    data: str  # its root
    size: int = 224  # zeroshot-cls input size
    split: str | None = None
    classes: str | None = None
    text: str | None = None  # the store's text table (default: the benchmark's)
    slide: list[int] | None = None  # semseg: [crop, stride]
    bg_threshold: float | None = None
    refine: bool = True  # semseg: also the SAM-head refinement
    limit: int | None = None

    def validate(self) -> None:
        if self.task not in ("zeroshot-cls", "semseg"):
            raise FieldError("task", f"expected zeroshot-cls or semseg, got {self.task!r}")
        if self.slide is not None and len(self.slide) != 2:
            raise FieldError("slide", f"expected [crop, stride], got {self.slide}")

    def argv(self) -> list[str]:
        """The `student.evaluate` options this benchmark stands for."""
        out = [self.task, "--dataset", self.dataset, "--data", self.data]
        if self.task == "zeroshot-cls":
            out += ["--size", str(self.size)]
        for option, value in (
            ("--split", self.split),
            ("--classes", self.classes),
            ("--text", self.text),
            ("--bg-threshold", self.bg_threshold),
            ("--limit", self.limit),
        ):
            if value is not None:
                out += [option, str(value)]
        if self.slide:
            out += ["--slide", *map(str, self.slide)]
        return out


@dataclass
class SuiteConfig:
    benchmarks: list[Benchmark] = field(default_factory=list)
    workers: int = 4  # decode threads of each evaluation

    def validate(self) -> None:
        if not self.benchmarks:
            raise FieldError("benchmarks", "expected at least one benchmark")
        names = [b.name for b in self.benchmarks]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise FieldError("benchmarks", f"names must differ; {repeated[0]!r} is used twice")


def figure(record: dict[str, Any]) -> float | str:
    """A result's headline figure in %, or 'n/a' where the model has no head for the task."""
    metrics = record["metrics"]
    if "not_applicable" in metrics:
        return "n/a"
    return round(100.0 * metrics[METRIC[record["task"]]], 2)


def table(suite: SuiteConfig, scores: dict[tuple[str, str], dict[str, float | str]]) -> dict[str, Any]:
    """Rows (model, head) present in `scores`, and the student's CLIP-head difference to the teacher
    on every benchmark where both have a figure."""
    student, teacher = scores.get(ROWS[0], {}), scores.get(ROWS[2], {})
    differences = {
        b.name: round(student[b.name] - teacher[b.name], 2)
        for b in suite.benchmarks
        if isinstance(student.get(b.name), float) and isinstance(teacher.get(b.name), float)
    }
    rows = [{"model": m, "head": h, "scores": scores[(m, h)]} for m, h in ROWS if (m, h) in scores]
    return {"benchmarks": [b.name for b in suite.benchmarks], "rows": rows, "student_minus_teacher": differences}


def markdown(result: dict[str, Any]) -> str:
    names = result["benchmarks"]
    lines = [
        "| model | head | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for row in result["rows"]:
        cells = [str(row["scores"].get(n, "")) for n in names]
        lines.append(f"| {row['model']} | {row['head']} | " + " | ".join(cells) + " |")
    diff = result["student_minus_teacher"]
    if diff:
        cells = [f"{diff[n]:+.2f}" if n in diff else "" for n in names]
        lines.append("| student - teacher | CLIP head | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def suite_main(argv: list[str], evaluate: Callable[[list[str]], int]) -> int:
    parser = argparse.ArgumentParser(prog="python -m student.evaluate suite", description=__doc__)
    parser.add_argument("--suite", required=True, help="the suite YAML (student/configs/eval/)")
    add_set_argument(parser)
    parser.add_argument("--export", required=True, help="the student's export folder")
    parser.add_argument("--job", help="the job config whose CLIP teacher made the store: adds the teacher's row")
    parser.add_argument("--out", default="out/eval/suite", help="folder for suite.json, suite.md and each result")
    parser.add_argument("--device", help="torch device (default: cuda if available)")
    args = parser.parse_args(argv)
    suite = load_config(SuiteConfig, args.suite, args.overrides)
    device = ["--device", args.device] if args.device else []
    runs: list[tuple[tuple[str, str], Benchmark, list[str], str]] = []
    for b in suite.benchmarks:
        out = os.path.join(args.out, b.name)
        common = [*b.argv(), "--workers", str(suite.workers), "--out", out, *device]
        runs.append((ROWS[0], b, [*common, "--export", args.export], f"{b.task}.json"))
        if b.task == "semseg" and b.refine:
            runs.append((ROWS[1], b, [*common, "--export", args.export, "--refine"], "semseg-refine.json"))
        if args.job:
            runs.append((ROWS[2], b, [*common, "--model", "teacher", "--job", args.job], f"{b.task}-teacher.json"))
    scores: dict[tuple[str, str], dict[str, float | str]] = {}
    records = []
    for row, b, run_argv, result_file in runs:
        print(f"== {b.name}: {row[0]}, {row[1]}")
        if evaluate(run_argv) != 0:
            raise ConfigError(f"benchmark '{b.name}' ({row[0]}, {row[1]}) failed")
        with open(os.path.join(args.out, b.name, result_file)) as f:
            record = json.load(f)
        scores.setdefault(row, {})[b.name] = figure(record)
        records.append({"benchmark": b.name, "model": row[0], "head": row[1], **record})
    result = {**table(suite, scores), "runs": records}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "suite.json"), "w") as f:
        json.dump(result, f, indent=2)
    text = markdown(result)
    with open(os.path.join(args.out, "suite.md"), "w") as f:
        f.write(text)
    print(text, end="")
    print(f"wrote {os.path.join(args.out, 'suite.md')} and suite.json (top-1 and mIoU in %)")
    return 0
