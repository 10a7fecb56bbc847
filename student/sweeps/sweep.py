"""Ablation sweeps against one store: a grid of `--set` overrides, trained one run after another
here, or printed as launch lines for a cluster.

    python -m student.sweep --config student/configs/tiny.yaml --grid stages.1.lambda_sam=0,10 out/sweeps/lambda
    python -m student.sweep --sweep student/configs/sweeps/paper_views.yaml --seeds 3 --print out/sweeps/views
    python -m student.compare out/sweeps/lambda

Grid: each `--grid KEY=V1,V2,...` (or the sweep file's `grid:` mapping) adds a key; values are YAML
as `--set` reads them (`null`, `1e-4`, `[224, 448]`: commas inside brackets do not split). The
points are the product of the keys in the order given, each repeated `seeds` times with
`seed` = the base config's seed + i. Every point's config is validated, and its run folder checked,
before the first run starts.

Run names (the folders OUTPUT/NAME): `KEY=VALUE` for each swept key, joined by `,`. KEY is the
shortest tail of the dotted key that no other swept key ends with (`stages.1.lambda_sam` ->
`lambda_sam`; `data.clip.batch_size` next to `data.sam.batch_size` -> `clip.batch_size`,
`sam.batch_size`); VALUE is the value as written, with each run of characters other than letters,
digits and `._+-` made one `-` (`[224, 448]` -> `224-448`, `null` stays `null`). With several
seeds the run's `seed=S` comes last: `lambda_sam=0,views=4,seed=1`.

Each run trains into OUTPUT/NAME through student/train.py in its own process (its config there
in config.yaml). Run again, the sweep skips a run that has its export and resumes one that has a
checkpoint (`--resume latest`); a folder that holds a run of another config stops it in one line.
OUTPUT/sweep.json records the grid and the runs for `student.compare`. A stop signal (SIGTERM,
SIGUSR1) to the sweep goes to the run under way; a run that stops on one, checkpointed, stops the
sweep with exit 0 and its OUTPUT/NAME/preempted.json copied to OUTPUT/, so that jobs/preemptible.sh
OUTPUT requeues the sweep like a single run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from typing import Any

from storage_schemas.plumbing.errors import ConfigError, run_cli
from storage_schemas.plumbing.typed_config import FieldError, add_set_argument, load_config
from student.config import config_record, load_train_config
from student.preemption import MARKER, ForwardStop, remove_marker
from student.run_dir import config_difference, run_status

TRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train.py")  # student/train.py
SWEEP_FILE = "sweep.json"


@dataclass
class SweepConfig:
    """A sweep file (student/configs/sweeps/*.yaml)."""

    base: str  # the training config every run starts from
    grid: dict[str, list[Any]] = field(default_factory=dict)  # dotted key -> values (YAML, as --set reads them)
    seeds: int = 1
    overrides: list[str] = field(default_factory=list)  # KEY=VALUE for every run

    def validate(self) -> None:
        if self.seeds < 1:
            raise FieldError("seeds", f"expected at least 1, got {self.seeds}")


@dataclass
class Run:
    name: str
    values: dict[str, str]  # swept key -> the value as written
    seed: int
    overrides: list[str]  # everything this run passes as --set, output_dir last
    output_dir: str


def split_values(key: str, text: str) -> list[str]:
    """'0,10' -> ['0', '10']; '[224, 448],[224]' -> ['[224, 448]', '[224]']."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch in "[{") - (ch in "]}")
        if ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    if depth or any(p == "" for p in parts):
        raise ConfigError(f"--grid {key}={text}: expected comma-separated YAML values, e.g. {key}=0,10")
    return parts


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key or not text:
            raise ConfigError(f"--grid '{item}': expected KEY=V1,V2,... with a dotted KEY")
        grid[key] = split_values(key, text)
    return grid


def as_text(value: Any) -> str:
    """A sweep file's YAML value back to the text `--set` reads (floats by repr, e.g. 4e-05, which
    the typed config reads as a float although PyYAML leaves it a string)."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value)


def short_keys(keys: list[str]) -> dict[str, str]:
    """Each dotted key's shortest tail that no other key ends with."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if not any(o != key and (o == tail or o.endswith("." + tail)) for o in keys):
                break
        out[key] = tail
    return out


_UNSAFE = r"[^A-Za-z0-9._+-]+"


def safe_value(text: str) -> str:
    """A value as a folder name: unsafe runs inside become '-', at the ends nothing ('-0.5' stays)."""
    return re.sub(_UNSAFE, "-", re.sub(f"^{_UNSAFE}|{_UNSAFE}$", "", text)) or "empty"


def expand(grid: dict[str, list[str]], seeds: int, base_seed: int, output: str, fixed: list[str]) -> list[Run]:
    if "output_dir" in grid:
        raise ConfigError("--grid output_dir: the sweep sets each run's output_dir (OUTPUT/NAME)")
    if "seed" in grid and seeds > 1:
        raise ConfigError("--grid seed with --seeds > 1: give seeds one way")
    names = short_keys(list(grid))
    runs, seen = [], {}
    for combo in itertools.product(*grid.values()):
        for i in range(seeds):
            values = dict(zip(grid, combo))
            label = ",".join(f"{names[k]}={safe_value(v)}" for k, v in values.items())
            seed_set = [f"seed={base_seed + i}"] if seeds > 1 else []
            name = ",".join(filter(None, [label, f"seed={base_seed + i}" if seeds > 1 else ""])) or "base"
            if name in seen:
                raise ConfigError(
                    f"grid values {seen[name]} and {values} both make run name '{name}'; write the values differently"
                )
            seen[name] = values
            out = os.path.join(output, name)
            runs.append(
                Run(
                    name,
                    values,
                    base_seed + i,
                    fixed + [f"{k}={v}" for k, v in values.items()] + seed_set + [f"output_dir={out}"],
                    out,
                )
            )
    return runs


def check_run_folder(run: Run, record: dict[str, Any]) -> None:
    """A folder that already holds a run must hold this point's config."""
    diff = config_difference(run.output_dir, record)
    if diff:
        raise ConfigError(
            f"{run.output_dir} holds a run of another config ({diff}); remove it or sweep into another OUTPUT"
        )


def launch_line(launcher: list[str], base: str, run: Run, resume: bool) -> list[str]:
    return [
        *launcher,
        "--config",
        base,
        *itertools.chain.from_iterable(("--set", o) for o in run.overrides),
        *(["--resume", "latest"] if resume else []),
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m student.sweep",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("output", metavar="OUTPUT", help="folder of the sweep: one run folder per point")
    p.add_argument("--sweep", help="sweep YAML (student/configs/sweeps/): base, grid, seeds, overrides")
    p.add_argument("--config", help="the base training config (instead of the sweep file's base)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...", help="a swept key (repeatable)")
    p.add_argument("--seeds", type=int, help="runs per point, seeds base seed + 0..N-1 (default 1)")
    add_set_argument(p, "override a config key in every run (repeatable)")
    p.add_argument(
        "--print", dest="print_only", action="store_true", help="print each run's launch line instead of running it"
    )
    p.add_argument(
        "--launch",
        default="accelerate launch",
        metavar="CMD",
        help="what --print puts before student/train.py (default: %(default)s)",
    )
    return p.parse_args(argv)


def load_sweep(args: argparse.Namespace) -> SweepConfig:
    sweep = load_config(SweepConfig, args.sweep) if args.sweep else None
    base = args.config or (sweep.base if sweep else None)
    if base is None:
        raise ConfigError("give the base training config: --config FILE, or --sweep FILE with a base")
    grid = {k: [as_text(v) for v in vs] for k, vs in (sweep.grid if sweep else {}).items()}
    grid.update(parse_grid(args.grid))
    for key, values in grid.items():
        if not values:
            raise ConfigError(f"grid key {key}: expected at least one value")
    seeds = args.seeds if args.seeds is not None else (sweep.seeds if sweep else 1)
    if seeds < 1:
        raise ConfigError(f"--seeds: expected at least 1, got {seeds}")
    return SweepConfig(base, grid, seeds, (sweep.overrides if sweep else []) + args.overrides)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sweep = load_sweep(args)
    base_seed = load_train_config(sweep.base, sweep.overrides).seed
    output = os.path.normpath(args.output)
    runs = expand(sweep.grid, sweep.seeds, base_seed, output, sweep.overrides)
    states = {}
    for run in runs:  # every point checked before anything runs
        try:
            cfg = load_train_config(sweep.base, run.overrides)
        except ConfigError as e:
            raise ConfigError(f"run {run.name}: {e}") from None
        check_run_folder(run, config_record(cfg))
        states[run.name] = run_status(run.output_dir)
    if args.print_only:
        for run in runs:
            launcher = [*shlex.split(args.launch), os.path.relpath(TRAIN_SCRIPT)]
            print(shlex.join(launch_line(launcher, sweep.base, run, states[run.name] == "partial")))
        return 0
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, SWEEP_FILE), "w") as f:
        json.dump(
            {
                "base": sweep.base,
                "grid": sweep.grid,
                "seeds": sweep.seeds,
                "overrides": sweep.overrides,
                "runs": [{"name": r.name, "values": r.values, "seed": r.seed} for r in runs],
            },
            f,
            indent=2,
        )
    done, forward = [], ForwardStop().install()
    remove_marker(output)
    for i, run in enumerate(runs, 1):
        state = states[run.name]
        if state == "finished":
            print(f"[{i}/{len(runs)}] {run.name}: finished before, skipped")
            done.append((run.name, "skipped"))
            continue
        print(
            f"[{i}/{len(runs)}] {run.name}: {'resuming' if state == 'partial' else 'training'} into {run.output_dir}",
            flush=True,
        )
        code = forward.run(launch_line([sys.executable, TRAIN_SCRIPT], sweep.base, run, state == "partial"))
        if code == 0 and os.path.isfile(os.path.join(run.output_dir, MARKER)):
            shutil.copyfile(os.path.join(run.output_dir, MARKER), os.path.join(output, MARKER))
            print(
                f"sweep stopped: run {run.name} was preempted (its {MARKER}); run the sweep again to resume it",
                file=sys.stderr,
            )
            return 0
        if code != 0:
            print(
                f"sweep stopped: run {run.name} exited with {code}; run the sweep again to resume it "
                f"(finished runs are skipped)",
                file=sys.stderr,
            )
            return 1
        done.append((run.name, "resumed" if state == "partial" else "trained"))
    print(f"sweep {output}: " + ", ".join(f"{name} {what}" for name, what in done))
    print(f"compare them: python -m student.compare {shlex.quote(output)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
