"""`python -m pipeline.text_targets CONFIG [--name NAME] [--classes BENCHMARK|FILE] [--templates openai|simple]`

Writes `text/NAME.parquet`: the CLIP teacher's text embedding of each class name, averaged over
prompt templates and renormalised, exactly as `open_clip.build_zero_shot_classifier` builds its
zero-shot head, so evaluation never needs the teacher. Class names are a benchmark's list
(imagenet, places365, voc, context59, ade20k, coco-stuff, coco-object: the table takes its name,
and evaluation on that dataset finds it) or a file with one name per line; templates are the 80
OpenAI ones or the simple set.
The teacher must be the one the store's CLIP manifest names, if the store has one. A table made
from the same class names, templates and teacher weights is kept, not rebuilt.
"""

from __future__ import annotations

import argparse
import io

import pyarrow.parquet as pq

from pipeline.config import load_job_config
from pipeline.teachers import load_clip_teacher
from storage_schemas.datasets.class_names import BENCHMARK_FILES, load_classnames
from storage_schemas.models.class_texts import (
    TEMPLATE_SETS,
    class_text_embeddings,
    template_set,
    template_texts,
    text_table,
)
from storage_schemas.plumbing.errors import ConfigError, ManifestMismatch, run_cli
from storage_schemas.plumbing.typed_config import add_config_arguments
from storage_schemas.store import layout
from storage_schemas.store.manifest import read_manifest, teacher_difference
from storage_schemas.store.root import StoreRoot
from storage_schemas.store.tables import parquet_bytes


def up_to_date(storage: StoreRoot, rel: str, classnames: list[str], templates, weights_sha256: str) -> bool:
    """Whether the table at `rel` was made from these class names, templates and teacher weights."""
    if not storage.exists(rel):
        return False
    table = pq.read_table(io.BytesIO(storage.read_bytes(rel)), columns=["class_name"])
    meta = table.schema.metadata or {}
    return (
        table.column("class_name").to_pylist() == classnames
        and meta.get(b"template_texts") == template_texts(templates).encode()
        and meta.get(b"teacher_weights_sha256") == weights_sha256.encode()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.text_targets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, "job config YAML: its store and clip.teacher are used")
    parser.add_argument("--name", help="table name: writes text/NAME.parquet (default: the benchmark's name)")
    parser.add_argument(
        "--classes",
        default="imagenet",
        help=f"a benchmark's class names ({', '.join(BENCHMARK_FILES)}) or a file with one name per line",
    )
    parser.add_argument("--templates", default="openai", choices=TEMPLATE_SETS)
    args = parser.parse_args(argv)
    cfg = load_job_config(args.config, args.overrides)
    if args.name is None:
        if args.classes not in BENCHMARK_FILES:
            raise ConfigError(f"--name: needed with --classes '{args.classes}' (a file): the table's name")
        args.name = args.classes
    try:
        layout.check_name("text table", args.name)
    except ValueError as e:
        raise ConfigError(f"--name: {e}") from None
    classnames = load_classnames(args.classes)
    storage = StoreRoot(cfg.store.url, cfg.store.storage_options)
    storage.check_reachable(create=True)
    teacher = load_clip_teacher(cfg.clip.teacher, cfg.store.storage_options)
    manifest = read_manifest(storage, "clip")
    if manifest is not None:
        mismatch = teacher_difference(manifest.must_match["teacher"], teacher.fingerprint.must_match())
        if mismatch:
            raise ManifestMismatch(
                f"store {storage.url}: the CLIP targets come from another teacher ({mismatch}); "
                "text embeddings must come from the same teacher"
            )
    templates = template_set(args.templates)
    if up_to_date(storage, layout.text_path(args.name), classnames, templates, teacher.fingerprint.weights_sha256):
        print(
            f"text/{args.name}.parquet: up to date (the same {len(classnames)} classes, templates and teacher "
            f"weights): kept"
        )
        return 0
    table = text_table(
        class_text_embeddings(teacher.model, teacher.tokenizer, classnames, templates),
        classnames,
        args.templates,
        templates,
        {"teacher_arch": teacher.fingerprint.arch, "teacher_weights_sha256": teacher.fingerprint.weights_sha256},
    )
    entry = storage.write_bytes(layout.text_path(args.name), parquet_bytes(table))
    print(
        f"text/{args.name}.parquet: {len(classnames)} classes x {len(templates)} templates, "
        f"D={table.schema.field('embedding').type.list_size}, {entry.size / 1e3:.1f} kB"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
