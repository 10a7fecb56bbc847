"""The store contract: where things live, the tables and their codecs, commit records, manifests,
tar indexes, transfer sets, and the reader of committed units.

`from storage_schemas.store import open_store` is the reader (`store/reader.py`); the modules
here are what a pipeline writes and a student reads, byte for byte.
"""

from storage_schemas.store.reader import (
    READ_THREADS,
    TABLE_SUFFIX,
    StoreConfig,
    TargetStore,
    listed,
    open_store,
    table_files,
)

__all__ = ["READ_THREADS", "TABLE_SUFFIX", "StoreConfig", "TargetStore", "listed", "open_store", "table_files"]
