"""`samclip`: one command for every tool of the project, a subcommand each.

    samclip materialize jobs/sample.yaml          # = python -m pipeline.materialize jobs/sample.yaml
    samclip --help                                # the subcommands, one line each

Each subcommand runs the module that `python -m` names exactly as `python -m` does, with the same
arguments: Ray job specs and scripts may use either form. Modules are imported only when their
subcommand runs, so `samclip --help` starts in well under a second.
"""

from __future__ import annotations

import runpy
import sys

# subcommand -> (the module it runs as `python -m` would, what it does)
COMMANDS: dict[str, tuple[str, str]] = {
    "sample-data": ("pipeline.sample_data", "write the sample corpus and its evaluation sets"),
    "tiny-teachers": ("pipeline.teachers.tiny", "write seeded tiny CLIP and SAM teachers for tests and demos"),
    "plan": ("pipeline.plan", "check a job config and print what a run would do, starting nothing"),
    "materialize": ("pipeline.materialize", "run the teachers over a job's sources into the store"),
    "text-targets": ("pipeline.text_targets", "embed class names with the store's CLIP teacher"),
    "validate": ("pipeline.validate", "check a store's records against its files; --gc, --uncommit-damaged"),
    "verify": ("pipeline.verify", "recompute sampled targets with the teachers and compare"),
    "transfer-set": ("pipeline.transfer_set", "select the store's views nearest to query images"),
    "store": ("storage_schemas", "summarise a store: manifests, units, rows, errors"),
    "evaluate": ("student.evaluate", "score an exported student on evaluation sets"),
    "visualize": ("student.visualize", "pictures of a student's predictions"),
    "inspect-store": ("student.inspect_store", "pictures of a store's cached targets"),
    "sweep": ("student.sweep", "train a grid of configs, resumable, one run folder each"),
    "compare": ("student.compare", "compare finished runs: table, curves, teacher FLOPs"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: samclip COMMAND [ARGS...]   (samclip COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    lines += ["", "training: accelerate launch student/train.py --config CONFIG.yaml"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(usage(), file=sys.stderr)
        sys.exit(2)
    if args[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0)
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"samclip: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [name, *rest]  # run_module puts the module's path first, as `python -m` does
    runpy.run_module(COMMANDS[name][0], run_name="__main__", alter_sys=True)
