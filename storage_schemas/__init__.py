"""The contract between the pipeline (which writes targets) and the student (which reads them).

Table schemas, the manifest and commit records, the store reader, and the code both sides must
agree on to the pixel. See storage_schemas/README.md for the layout.
"""

from storage_schemas.commit import CommitRecord, InputRef, read_commit, write_commit
from storage_schemas.errors import ConfigError, ManifestMismatch, StoreError, UserError
from storage_schemas.identity import SampleId, is_held_out, sample_seed, stable_hash64
from storage_schemas.manifest import Manifest, ensure_manifest, read_manifest
from storage_schemas.storage import FileEntry, Storage
from storage_schemas.store import TargetStore, open_store

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
    "TargetStore",
    "UserError",
    "ensure_manifest",
    "is_held_out",
    "open_store",
    "read_commit",
    "read_manifest",
    "sample_seed",
    "stable_hash64",
    "write_commit",
]
