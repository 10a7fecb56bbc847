"""Runs side by side: final validation metrics, validation curves, and the teacher work the store saved.

    python -m student.compare out/sweeps/lambda [OTHER_SWEEP_OR_RUN ...] [--out DIR]

Reads each run's `config.yaml`, `validation.jsonl` and `export/student.json` (TensorBoard files are
not read); a run without an export is partial, and its newest checkpoint's `trainer_state.json`
gives its steps. A sweep folder (student.sweep) brings its runs in order. Prints one table with a
row per point: the swept values (the config keys whose values differ between the runs, the seed
apart), the final validation metrics (each run's last validation) as mean +- std over the point's
seeds where it has several, steps, the training loop's wall time, and the teacher work the runs
did not do. Writes the table as comparison.csv and comparison.md and the validation curves as
comparison.png (a panel per metric, a colour per point) into --out (default: the first folder).

Teacher work saved: the CLIP views, SAM images and SAM prompts a run consumed (counted over all
processes by the trainer) times the teachers' forward FLOPs (`storage_schemas.models.teacher_flops`, from
the architectures in the store's manifests) - what online distillation would have spent running
the teachers on the same batches. The store's own cost was paid once, for every run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
from dataclasses import dataclass
from typing import Any

import yaml

from storage_schemas.models.teacher_flops import TeacherFlops, manifest_flops, teacher_flops
from storage_schemas.plumbing.console import format_table
from storage_schemas.plumbing.errors import ConfigError, StoreError, run_cli
from student.config import RUN_CONFIG, flat_config
from student.run_dir import CHECKPOINTS, EXPORT_META, STATE_FILE, VALIDATION_FILE, checkpoint_names
from student.sweeps.sweep import SWEEP_FILE, as_text, short_keys

CONSUMED = ("clip_views", "sam_images", "sam_prompts")


@dataclass
class RunResult:
    name: str
    path: str
    config: dict[str, Any]  # flat dotted keys -> values
    validation: list[dict[str, Any]]  # one row per (stage, step), by step
    status: str  # finished | partial | not started
    steps: int
    seconds: float | None
    consumed: dict[str, int] | None  # CONSUMED -> count (None: a run from before they were counted)
    flops: TeacherFlops | None

    @property
    def final(self) -> dict[str, float]:
        return self.validation[-1] if self.validation else {}

    @property
    def saved_flops(self) -> float | None:
        if self.consumed is None or self.flops is None:
            return None
        return self.flops.of(*(self.consumed[k] for k in CONSUMED))


def read_validation(path: str) -> list[dict[str, Any]]:
    """validation.jsonl's rows, the last one of each (stage, step) kept: a resumed run validates
    again the steps it redoes after its checkpoint."""
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                print(
                    f"warning: {path} line {n} is not JSON (a run killed while writing it?); left out", file=sys.stderr
                )
                continue
            rows[(row.get("stage", ""), int(row["step"]))] = row
    return sorted(rows.values(), key=lambda r: r["step"])


def latest_state(run_dir: str) -> dict[str, Any] | None:
    for name in reversed(checkpoint_names(run_dir)):
        path = os.path.join(run_dir, CHECKPOINTS, name, STATE_FILE)
        if os.path.isfile(path):
            with open(path) as f:
                return json.load(f)["state"]
    return None


def store_flops(config: dict[str, Any]) -> TeacherFlops | None:
    """A partial run's teachers' FLOPs, from its store's manifests (None where it cannot be read)."""
    from storage_schemas.store import open_store

    try:
        store = open_store(config["store.url"])
        return manifest_flops(store.manifest("clip"), store.manifest("sam"))
    except (StoreError, OSError) as e:
        print(f"warning: store {config['store.url']}: {e}; its runs' teacher work is not counted", file=sys.stderr)
        return None


def read_run(path: str, name: str) -> RunResult:
    config_path = os.path.join(path, RUN_CONFIG)
    if not os.path.isfile(config_path):
        raise ConfigError(f"{path}: no {RUN_CONFIG}; expected a run folder of student/train.py or a sweep folder")
    with open(config_path) as f:
        config = flat_config(yaml.safe_load(f) or {})
    validation = read_validation(os.path.join(path, VALIDATION_FILE))
    meta_path = os.path.join(path, EXPORT_META)
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        consumed = meta.get("consumed")
        teachers = (meta.get("clip_teacher"), meta.get("sam_teacher"), bool(meta.get("sam_multimask")))
        return RunResult(
            name,
            path,
            config,
            validation,
            "finished",
            int(meta["global_step"]),
            meta.get("train_seconds"),
            consumed,
            teacher_flops(*teachers),
        )
    state = latest_state(path)
    if state is None:
        return RunResult(name, path, config, validation, "not started", 0, None, None, None)
    return RunResult(
        name,
        path,
        config,
        validation,
        "partial",
        int(state["global_step"]),
        state.get("train_seconds"),
        {k: int(state.get(k, 0)) for k in CONSUMED},
        store_flops(config),
    )


def collect(paths: list[str]) -> list[RunResult]:
    runs = []
    for path in paths:
        sweep = os.path.join(path, SWEEP_FILE)
        if os.path.isfile(sweep):
            with open(sweep) as f:
                names = [r["name"] for r in json.load(f)["runs"]]
            runs += [read_run(os.path.join(path, n), n) for n in names if os.path.isdir(os.path.join(path, n))]
        elif os.path.isdir(path):
            runs.append(read_run(path, os.path.basename(os.path.normpath(path))))
        else:
            raise ConfigError(f"{path}: not a folder; expected a run folder or a sweep folder")
    if not runs:
        raise ConfigError(f"no runs under {', '.join(paths)}")
    return runs


def swept_keys(runs: list[RunResult]) -> list[str]:
    """Config keys whose values differ between the runs, in config order (output_dir and seed apart)."""
    keys = list(dict.fromkeys(k for r in runs for k in r.config))
    return [k for k in keys if k not in ("output_dir", "seed") and len({json.dumps(r.config.get(k)) for r in runs}) > 1]


@dataclass
class Point:
    values: dict[str, Any]  # swept key -> value
    runs: list[RunResult]

    @property
    def status(self) -> str:
        return "/".join(sorted({r.status for r in self.runs}))

    @property
    def seconds(self) -> float | None:
        """The runs' mean training-loop wall time (None: none recorded)."""
        xs = [r.seconds for r in self.runs if r.seconds is not None]
        return statistics.mean(xs) if xs else None

    @property
    def consumed(self) -> dict[str, int] | None:
        if any(r.consumed is None for r in self.runs):
            return None
        return {k: sum(r.consumed[k] for r in self.runs) for k in CONSUMED}

    @property
    def saved_flops(self) -> float | None:
        saved = [r.saved_flops for r in self.runs]
        return None if None in saved else sum(saved)

    def metric(self, key: str) -> tuple[float, float | None, int] | None:
        """(mean, std or None, n) of the runs' final values of `key`."""
        xs = [r.final[key] for r in self.runs if key in r.final]
        if not xs:
            return None
        return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else None, len(xs)


def points_of(runs: list[RunResult], keys: list[str]) -> list[Point]:
    points: dict[str, Point] = {}
    for r in runs:
        values = {k: r.config.get(k) for k in keys}
        points.setdefault(json.dumps(values, sort_keys=True), Point(values, [])).runs.append(r)
    return list(points.values())


def metric_names(runs: list[RunResult]) -> list[str]:
    return list(dict.fromkeys(k for r in runs for k in r.final if k.startswith("val/") and not k.endswith("chance")))


def format_flops(x: float | None) -> str:
    if x is None:
        return "?"
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g} FLOP"


def format_metric(m: tuple[float, float | None, int] | None) -> str:
    if m is None:
        return "-"
    mean, std, n = m
    return f"{mean:.4f}" if std is None else f"{mean:.4f} +- {std:.4f} (n={n})"


def table(points: list[Point], keys: list[str], metrics: list[str]) -> tuple[list[str], list[list[str]]]:
    short = short_keys(keys)
    header = (
        [short[k] for k in keys]
        + ["runs", "status", "steps", "wall"]
        + [m[4:] for m in metrics]
        + ["teacher work saved"]
    )
    rows = []
    for p in points:
        steps = sorted({r.steps for r in p.runs})
        rows.append(
            [as_text(p.values[k]) for k in keys]
            + [
                str(len(p.runs)),
                p.status,
                str(steps[0]) if len(steps) == 1 else f"{steps[0]}-{steps[-1]}",
                f"{p.seconds:.0f} s" if p.seconds is not None else "?",
            ]
            + [format_metric(p.metric(m)) for m in metrics]
            + [format_flops(p.saved_flops)]
        )
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def write_csv(path: str, points: list[Point], keys: list[str], metrics: list[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            keys
            + ["runs", "status", "steps", "train_seconds"]
            + [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
            + list(CONSUMED)
            + ["teacher_flops_saved"]
        )
        for p in points:
            stats = [p.metric(m) for m in metrics]
            consumed = p.consumed
            w.writerow(
                [as_text(p.values[k]) for k in keys]
                + [len(p.runs), p.status, max(r.steps for r in p.runs), "" if p.seconds is None else p.seconds]
                + [x for s in stats for x in ((s[0], "" if s[1] is None else s[1]) if s else ("", ""))]
                + [consumed[k] if consumed else "" for k in CONSUMED]
                + ["" if p.saved_flops is None else p.saved_flops]
            )


def plot_curves(path: str, points: list[Point], keys: list[str], metrics: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    short = short_keys(keys)
    cols = min(3, max(1, len(metrics)))
    rows = -(-max(1, len(metrics)) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, metric in zip(axes.flat, metrics):
        for i, p in enumerate(points):
            label = ", ".join(f"{short[k]}={as_text(p.values[k])}" for k in keys) or p.runs[0].name
            for j, r in enumerate(p.runs):
                xs = [row["step"] for row in r.validation if metric in row]
                ys = [row[metric] for row in r.validation if metric in row]
                ax.plot(
                    xs,
                    ys,
                    marker=".",
                    color=colours(i % 10),
                    alpha=0.9 if len(p.runs) == 1 else 0.6,
                    label=label if j == 0 else None,
                )
        first = points[0].runs[0].validation
        for a, b in zip(first, first[1:]):  # stage boundaries of the first run
            if a.get("stage") != b.get("stage"):
                ax.axvline(b["step"], color="0.6", linestyle=":", linewidth=1)
                ax.text(
                    b["step"],
                    1.0,
                    f" {b['stage']}",
                    transform=ax.get_xaxis_transform(),
                    va="top",
                    fontsize=7,
                    color="0.4",
                )
        ax.set_title(metric[4:] if metric.startswith("val/") else metric, fontsize=10)
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08 if handles else 0, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m student.compare",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("runs", nargs="+", metavar="RUN_OR_SWEEP_DIR")
    p.add_argument("--out", help="where comparison.{csv,md,png} go (default: the first folder given)")
    args = p.parse_args(argv)
    runs = collect(args.runs)
    keys = swept_keys(runs)
    metrics = metric_names(runs)
    points = points_of(runs, keys)
    header, rows = table(points, keys, metrics)
    print(format_table(header, rows))
    saved = [r.saved_flops for r in runs]
    consumed = [r.consumed for r in runs if r.consumed is not None]
    totals = {k: sum(c[k] for c in consumed) for k in CONSUMED}
    print(
        f"\nteacher work the store saved over {len(runs)} run(s): "
        f"{format_flops(sum(s for s in saved if s is not None))} ({totals['clip_views']:,} CLIP views, "
        f"{totals['sam_images']:,} SAM images, {totals['sam_prompts']:,} SAM prompts"
        + (f"; {saved.count(None)} run(s) not counted" if None in saved else "")
        + ")"
    )
    out = args.out or args.runs[0]
    os.makedirs(out, exist_ok=True)
    write_csv(os.path.join(out, "comparison.csv"), points, keys, metrics)
    with open(os.path.join(out, "comparison.md"), "w") as f:
        f.write(markdown(header, rows))
    plot_curves(os.path.join(out, "comparison.png"), points, keys, metrics)
    print(f"wrote {', '.join(os.path.join(out, f'comparison.{e}') for e in ('csv', 'md', 'png'))}")
    return 0


if __name__ == "__main__":
    run_cli(main)
