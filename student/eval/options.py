"""Command-line options the evaluation commands share (`student.evaluate`, `student.visualize`):
where the class-name embeddings come from, and the refinement's arguments.

    add_class_name_arguments(parser)                       # --store, --text, --text-tower ...
    classes = class_names(args, names, store_url, meta)    # checked against the student's teacher
"""

from __future__ import annotations

import argparse
from typing import Any

from storage_schemas.plumbing.errors import ConfigError
from storage_schemas.store import open_store
from student.eval.zero_shot import ClassNames, StoreText, TextTower


def add_class_name_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", help="target store URL (default: the one the student trained on)")
    parser.add_argument("--text", help="text table of the store holding the class-name embeddings")
    parser.add_argument("--text-tower", help="open_clip architecture whose text tower embeds the class names")
    parser.add_argument("--text-pretrained", help="checkpoint of --text-tower")
    parser.add_argument("--text-cache", default="~/.cache/samclip/text", help="where tower embeddings are cached")
    parser.add_argument("--templates", choices=("openai", "simple"), help="--text-tower only (default: openai)")


def class_names(
    args: argparse.Namespace,
    names: list[str],
    store_url: str | None,
    meta: dict[str, Any],
    dataset_table: str | None = None,
) -> ClassNames:
    """The class embeddings the arguments of `add_class_name_arguments` name (the store's table
    `dataset_table`, a benchmark's, when they name none), checked to come from the text tower of
    the CLIP teacher the student was distilled from (where both are known)."""
    if args.text_tower:
        if not args.text_pretrained:
            raise ConfigError("--text-tower needs --text-pretrained (the tower's checkpoint)")
        classes = TextTower(args.text_tower, args.text_pretrained, args.templates or "openai", args.text_cache)(names)
    else:
        table = args.text or dataset_table
        if not table:
            raise ConfigError("class embeddings: give --text NAME (a text table of the store) or --text-tower")
        if args.templates:
            raise ConfigError("--templates applies to --text-tower; a text table was built with its own templates")
        if not store_url:
            raise ConfigError("--text needs a store: give --store (the export names none)")
        store = open_store(store_url)
        if table not in store.text_names():
            benchmark = f"--classes {table}" if table == dataset_table else "--classes FILE"
            raise ConfigError(
                f"store {store.url} has no text table '{table}' (has: {', '.join(store.text_names()) or 'none'}); "
                f"`python -m pipeline.text_targets JOB --name {table} {benchmark}` writes it"
            )
        classes = StoreText(store, table)(names)
    teacher = meta.get("clip_teacher", {}).get("weights_sha256")
    if teacher and classes.teacher_weights_sha256 and teacher != classes.teacher_weights_sha256:
        raise ConfigError(
            f"the class embeddings come from CLIP weights {classes.teacher_weights_sha256[:12]}..., "
            f"the student was distilled from {teacher[:12]}...; use that teacher's text tower"
        )
    return classes


def check_refine_arguments(threshold: float, points: int) -> None:
    if not 0.0 <= threshold < 1.0:
        raise ConfigError(f"--threshold: expected a class probability in [0, 1), got {threshold}")
    if points < 1:
        raise ConfigError(f"--points: expected at least 1 point per class, got {points}")
