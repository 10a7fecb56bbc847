"""The project's own open_clip architectures, registered with open_clip on import.

`samclip-tiny-clip` (model_configs/) is open_clip's CLIP at tiny widths: tests and the demo run the
CLIP teacher from it (`pipeline.teachers.tiny` writes its weights), and the student side names it
too (zero-shot text towers, `storage_schemas.models.teacher_flops`), so both register it from here.
"""

from __future__ import annotations

import contextlib
import logging
import os

import open_clip

open_clip.add_model_config(os.path.join(os.path.dirname(__file__), "model_configs"))

TINY_CLIP_ARCH = "samclip-tiny-clip"


@contextlib.contextmanager
def no_weights_warning():
    """Silence open_clip's "No pretrained weights loaded" where a random init is intended."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
