"""Class-name text embeddings: how they are built and the table that holds them.

    weights = class_text_embeddings(model, tokenizer, ["cat", "dog"], template_set("openai"))  # [C, D]
    table = text_table(weights, ["cat", "dog"], "openai", extra_metadata)  # text/NAME.parquet's rows

Built exactly as `open_clip.build_zero_shot_classifier` builds its zero-shot head (mean of the
normalised template embeddings, renormalised). The pipeline writes them into the store with the
teacher (`pipeline.text_targets`); evaluation reads them back, or builds them from a text tower
it was given and caches them in the same format. open_clip is imported only when a tower is used,
so reading a table never pulls in a CLIP model.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import torch

from storage_schemas.plumbing.errors import ConfigError
from storage_schemas.store.tables import text_embeddings_schema

TEMPLATE_SETS = ("openai", "simple")


def template_set(name: str) -> Sequence[Callable[[str], str]]:
    """open_clip's prompt templates: the 80 OpenAI ones or the simple set."""
    from open_clip import zero_shot_metadata

    sets = {
        "openai": zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES,
        "simple": zero_shot_metadata.SIMPLE_IMAGENET_TEMPLATES,
    }
    if name not in sets:
        raise ConfigError(f"templates '{name}': expected one of {', '.join(TEMPLATE_SETS)}")
    return sets[name]


def class_text_embeddings(
    model: torch.nn.Module, tokenizer: Any, classnames: list[str], templates: Sequence[Callable[[str], str]]
) -> np.ndarray:
    """[C, D] float32, L2-normalised: open_clip's zero-shot classifier, transposed."""
    import open_clip

    with torch.no_grad():
        weights = open_clip.build_zero_shot_classifier(
            model, tokenizer, classnames, templates, num_classes_per_batch=10, device=next(model.parameters()).device
        )
    return weights.T.float().cpu().numpy()


def template_texts(templates: Sequence[Callable[[str], str]]) -> str:
    """The templates as the table's metadata records them: JSON of each applied to "{}"."""
    return json.dumps([t("{}") if callable(t) else t for t in templates])


def text_table(
    embeddings: np.ndarray,
    classnames: list[str],
    templates_name: str,
    templates: Sequence[Callable[[str], str]],
    metadata: dict[str, str],
) -> pa.Table:
    """embeddings: [C, D] -> the rows of `text/NAME.parquet`, with what made them in its metadata."""
    schema = text_embeddings_schema(embeddings.shape[1])
    meta = {
        **schema.metadata,
        b"templates": templates_name.encode(),
        b"template_texts": template_texts(templates).encode(),
        **{k.encode(): v.encode() for k, v in metadata.items()},
    }
    table = pa.Table.from_arrays(
        [
            pa.array(np.arange(len(classnames), dtype=np.int32)),
            pa.array(classnames, pa.string()),
            pa.FixedSizeListArray.from_arrays(
                pa.array(np.ascontiguousarray(embeddings, np.float32).reshape(-1)), type=schema.field("embedding").type
            ),
        ],
        schema=schema,
    )
    return table.replace_schema_metadata(meta)
