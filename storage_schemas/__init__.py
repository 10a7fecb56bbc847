"""The contract between the pipeline (which writes targets) and the student (which reads them).

    store/      the store contract: layout, tables and codecs, commit records, manifests, the reader
    pixels/     the pixel rules both sides agree on: tar streaming, decode, views, SAM transforms
    models/     SAM architectures, open_clip configs, checkpoints, class texts, teacher FLOPs
    plumbing/   typed configs, one-line user errors, console tables, fault points for tests

See storage_schemas/README.md for the layout of a store and each module. Imports written before
the regrouping (`storage_schemas.views`, `storage_schemas.decode`, ...) still work
(`moved_modules.py`).
"""

from storage_schemas import moved_modules
from storage_schemas.plumbing.errors import ConfigError, ManifestMismatch, StoreError, UserError
from storage_schemas.store import TargetStore, open_store
from storage_schemas.store.commit import CommitRecord, InputRef, create_commit, read_commit
from storage_schemas.store.identity import SampleId, is_held_out, sample_seed, stable_hash64
from storage_schemas.store.manifest import Manifest, ensure_manifest, read_manifest
from storage_schemas.store.root import FileEntry, Storage, StoreRoot

moved_modules.install()

__all__ = [
    "CommitRecord",
    "ConfigError",
    "FileEntry",
    "InputRef",
    "Manifest",
    "ManifestMismatch",
    "SampleId",
    "Storage",
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
