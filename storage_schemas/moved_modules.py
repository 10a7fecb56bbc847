"""The modules of the flat `storage_schemas` (before the regrouping into subpackages) and where
they live now. The old import paths keep working: `import storage_schemas.views` gives the very
module `storage_schemas.pixels.views`, so names, isinstance checks and pickles agree. New code
imports the new paths; this table is also the map for reading older code.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "layout": "store.layout",
    "storage": "store.root",
    "tables": "store.tables",
    "clip_views_table": "store.clip_views",
    "sam_tables": "store.sam_tables",
    "mask_logits": "store.mask_logits",
    "commit": "store.commit",
    "manifest": "store.manifest",
    "identity": "store.identity",
    "tar_index": "store.tar_index",
    "unit_tar": "store.unit_tar",
    "subsets": "store.subsets",
    "decode": "pixels.decode",
    "views": "pixels.views",
    "sam_transforms": "pixels.sam_transforms",
    "tar_samples": "pixels.tar_samples",
    "labelled_images": "pixels.labelled_images",
    "sam_models": "models.sam_models",
    "clip_archs": "models.clip_archs",
    "checkpoints": "models.checkpoints",
    "teacher_flops": "models.teacher_flops",
    "class_texts": "models.class_texts",
    "typed_config": "plumbing.typed_config",
    "errors": "plumbing.errors",
    "console": "plumbing.console",
    "faults": "plumbing.faults",
}  # `storage_schemas.store` (the reader) is now the `store` package, which re-exports it
PACKAGE = "storage_schemas"


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves `storage_schemas.OLD` to the module now at `storage_schemas.MOVED[OLD]`."""

    def find_spec(self, fullname, path, target=None):
        package, _, old = fullname.partition(".")
        if package != PACKAGE or old not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        # The import system keeps a module's own __name__ and __spec__ when the loader hands it one.
        return importlib.import_module(f"{PACKAGE}.{MOVED[spec.name.partition('.')[2]]}")

    def exec_module(self, module):
        pass  # already executed under its new name


def install() -> None:
    """Append the finder once; it is consulted only after every real module failed to be found."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
