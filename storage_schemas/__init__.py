"""The contract between the pipeline (which writes targets) and the student (which reads them).

    store/      the store contract: layout, tables and codecs, commit records, manifests, the reader
    pixels/     the pixel rules both sides agree on: tar streaming, decode, views, SAM transforms
    datasets/   evaluation and query sets in the benchmarks' own layouts, their class names
    models/     SAM architectures, open_clip configs, checkpoints, class texts, teacher FLOPs
    plumbing/   sample identity and seeds, error reasons, file facts, typed configs, one-line user
                errors, console tables, fault points and a byte-counting filesystem for tests

Layers (import-linter, pyproject.toml): models > store and datasets (apart) > pixels > plumbing.

See docs/store.md for the layout of a store and each module.
"""

from storage_schemas.plumbing.errors import ConfigError, ManifestMismatch, StoreError, UserError
from storage_schemas.plumbing.identity import SampleId, is_held_out, sample_seed, stable_hash64
from storage_schemas.store import TargetStore, open_store
from storage_schemas.store.commit import CommitRecord, InputRef, create_commit, read_commit
from storage_schemas.store.manifest import Manifest, ensure_manifest, read_manifest
from storage_schemas.store.root import FileEntry, StoreRoot

__all__ = [
    "CommitRecord",
    "ConfigError",
    "FileEntry",
    "InputRef",
    "Manifest",
    "ManifestMismatch",
    "SampleId",
    "StoreError",
    "StoreRoot",
    "TargetStore",
    "UserError",
    "create_commit",
    "ensure_manifest",
    "is_held_out",
    "open_store",
    "read_commit",
    "read_manifest",
    "sample_seed",
    "stable_hash64",
]
