"""`python -m pipeline.text_targets CONFIG --name NAME [--classes imagenet|FILE] [--templates openai|simple]`

Writes `text/NAME.parquet`: the CLIP teacher's text embedding of each class name, averaged over
prompt templates and renormalised, exactly as `open_clip.build_zero_shot_classifier` builds its
zero-shot head, so evaluation never needs the teacher. Class names are open_clip's ImageNet-1k
names or a file with one name per line; templates are the 80 OpenAI ones or the simple set.
The teacher must be the one the store's CLIP manifest names, if the store has one.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import open_clip
import pyarrow as pa
import torch
from open_clip import zero_shot_metadata

from pipeline.config import load_job_config
from pipeline.teachers import ClipTeacher, load_clip_teacher
from storage_schemas import layout
from storage_schemas.errors import ConfigError, ManifestMismatch, run_cli
from storage_schemas.manifest import differences, read_manifest
from storage_schemas.storage import Storage
from storage_schemas.tables import parquet_bytes, text_embeddings_schema
from storage_schemas.typed_config import add_config_arguments

TEMPLATE_SETS = {
    "openai": zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES,
    "simple": zero_shot_metadata.SIMPLE_IMAGENET_TEMPLATES,
}


def load_classnames(spec: str) -> list[str]:
    if spec == "imagenet":
        return list(zero_shot_metadata.IMAGENET_CLASSNAMES)
    if not os.path.isfile(spec):
        raise ConfigError(f"--classes '{spec}': expected 'imagenet' or a file with one class name per line")
    with open(spec) as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise ConfigError(f"--classes '{spec}': the file has no class names")
    return names


def class_embeddings(teacher: ClipTeacher, classnames: list[str], templates) -> np.ndarray:
    """[C, D] float32, L2-normalised: open_clip's zero-shot classifier, transposed."""
    with torch.no_grad():
        weights = open_clip.build_zero_shot_classifier(
            teacher.model, teacher.tokenizer, classnames, templates, num_classes_per_batch=10,
            device=next(teacher.model.parameters()).device,
        )
    return weights.T.float().cpu().numpy()


def text_table(teacher: ClipTeacher, classnames: list[str], templates, template_set: str) -> pa.Table:
    emb = class_embeddings(teacher, classnames, templates)
    schema = text_embeddings_schema(emb.shape[1])
    meta = {**schema.metadata, b"teacher_arch": teacher.fingerprint.arch.encode(),
            b"teacher_weights_sha256": teacher.fingerprint.weights_sha256.encode(),
            b"templates": template_set.encode(),
            b"template_texts": json.dumps([t("{}") if callable(t) else t for t in templates]).encode()}
    table = pa.Table.from_arrays(
        [pa.array(np.arange(len(classnames), dtype=np.int32)), pa.array(classnames, pa.string()),
         pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), type=schema.field("embedding").type)],
        schema=schema,
    )
    return table.replace_schema_metadata(meta)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.text_targets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, "job config YAML: its store and clip.teacher are used")
    parser.add_argument("--name", required=True, help="table name: writes text/NAME.parquet")
    parser.add_argument("--classes", default="imagenet", help="'imagenet' or a file with one class name per line")
    parser.add_argument("--templates", default="openai", choices=sorted(TEMPLATE_SETS))
    args = parser.parse_args(argv)
    cfg = load_job_config(args.config, args.overrides)
    try:
        layout.check_name("text table", args.name)
    except ValueError as e:
        raise ConfigError(f"--name: {e}") from None
    classnames = load_classnames(args.classes)
    storage = Storage(cfg.store.url, cfg.store.storage_options)
    storage.check_reachable(create=True)
    teacher = load_clip_teacher(cfg.clip.teacher, cfg.store.storage_options)
    manifest = read_manifest(storage, "clip")
    if manifest is not None:
        diffs = differences(manifest.must_match["teacher"], teacher.fingerprint.must_match())
        if diffs:
            key, a, b = diffs[0]
            raise ManifestMismatch(f"store {storage.url}: the CLIP targets come from another teacher "
                                   f"(teacher.{key}: store has {a!r}, job has {b!r}); text embeddings must "
                                   "come from the same teacher")
    table = text_table(teacher, classnames, TEMPLATE_SETS[args.templates], args.templates)
    entry = storage.write_bytes(layout.text_path(args.name), parquet_bytes(table))
    print(f"text/{args.name}.parquet: {len(classnames)} classes x {len(TEMPLATE_SETS[args.templates])} templates, "
          f"D={table.schema.field('embedding').type.list_size}, {entry.size / 1e3:.1f} kB")
    return 0


if __name__ == "__main__":
    run_cli(main)
