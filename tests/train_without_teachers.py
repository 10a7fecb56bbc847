"""Run student/train.py's main with every way to a teacher blocked: open_clip cannot be imported,
and SAM's own forward, SamPredictor and the pipeline's teacher loaders raise if called.

    python tests/train_without_teachers.py --config ... [--set ...] [--resume latest]

At exit it writes which of the blocked modules were imported to $NO_TEACHER_REPORT.
"""

import json
import os
import sys

sys.modules["open_clip"] = None  # `import open_clip` now raises ImportError

import segment_anything  # noqa: E402
from segment_anything.modeling import Sam  # noqa: E402


def refuse(*args, **kwargs):
    raise AssertionError("the trainer ran a teacher")


Sam.forward = refuse
segment_anything.SamPredictor.__init__ = refuse

from storage_schemas.plumbing.errors import run_cli  # noqa: E402
from student.train import main  # noqa: E402

try:
    run_cli(main)
finally:
    with open(os.environ["NO_TEACHER_REPORT"], "w") as f:
        json.dump(
            {
                "imported": sorted(
                    m
                    for m in ("open_clip", "pipeline.teachers", "pipeline.materialize")
                    if sys.modules.get(m) is not None
                )
            },
            f,
        )
