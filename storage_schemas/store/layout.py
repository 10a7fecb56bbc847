"""Where things live inside a store ROOT. Every path here is relative to ROOT.

    ROOT/
      clip/_manifest.json                      per kind, created before the first commit
      clip/SOURCE/UNIT/PART.parquet            one row per (sample, view) of the part's samples
      sam/_manifest.json
      sam/SOURCE/UNIT/PART.parquet             one row per (sample, prompt, round)
      sam/SOURCE/UNIT/PART.images.parquet      one row per stored image
      sam/SOURCE/UNIT/PART.zarr                mask logits [n_images, P * rounds, M, 256, 256]
      text/NAME.parquet                        class-name text embeddings
      _commits/KIND/SOURCE/UNIT.json           written last, created only if absent: what the unit holds
      _errors/KIND/SOURCE/UNIT/ATTEMPT.parquet one row per input sample that could not be used
      _claims/KIND/SOURCE/NAME/gNNNNNN.json    a job working on unit (or streamed shard) NAME, by generation
      _cuts/KIND/SOURCE.json                   how the source's shards are cut into units (unit_size)
      _quarantine/_commits/KIND/SOURCE/UNIT.STAMP.json  records of damaged units, moved aside
      _tar_index/KIND/SOURCE/SHARD.parquet     where each member of an input tar lies (storage_schemas.store.tar_index)
      indexes/NAME/                            a faiss index of the CLIP view embeddings (pipeline.transfer)
      queries/CHECKSUM.parquet                 a query set's teacher embeddings (pipeline.transfer.queries)
      subsets/NAME.parquet, NAME.json, NAME.png  a transfer set (storage_schemas.store.subsets)

A PART is what one teacher actor call wrote for one unit (`p0000128-5d2e8c01a9b4-3f9a1c2e`: its
first sample index, the job attempt's id and the call's). An ATTEMPT is one start of a job's driver;
every file it writes carries its id. Stores made before attempts named their files with the call's
id alone (`p0000128-3f9a1c2e`, `_errors/KIND/SOURCE/UNIT.parquet`); readers find every file through
the commit records, which list them.
"""

from __future__ import annotations

import re

KINDS = ("clip", "sam")
COMMITS_DIR = "_commits"
ERRORS_DIR = "_errors"
CLAIMS_DIR = "_claims"
CUTS_DIR = "_cuts"
QUARANTINE_DIR = "_quarantine"
PROBES_DIR = "_probes"  # short-lived files of the start-up and clock probes (StoreRoot)
TAR_INDEX_DIR = "_tar_index"
TEXT_DIR = "text"
INDEXES_DIR = "indexes"
QUERIES_DIR = "queries"
SUBSETS_DIR = "subsets"

# Source and unit names become path components, so keep them to a safe alphabet.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_name(what: str, name: str) -> str:
    if not _NAME.match(name) or ".." in name:
        raise ValueError(f"{what} name {name!r}: use letters, digits, '_', '-', '.' only")
    return name


def unit_name(shard: str, unit_no: int | None = None) -> str:
    """`00042` for a whole shard, `sa_000123.p003` for samples 3000-3999 of a shard cut into units."""
    return shard if unit_no is None else f"{shard}.p{unit_no:03d}"


def tar_index_path(kind: str, source: str, shard: str) -> str:
    return f"{TAR_INDEX_DIR}/{kind}/{source}/{shard}.parquet"


def manifest_path(kind: str) -> str:
    return f"{kind}/_manifest.json"


def unit_dir(kind: str, source: str, unit: str) -> str:
    return f"{kind}/{source}/{unit}"


def part_name(first_sample: int, attempt: str, call: str) -> str:
    return f"p{first_sample:07d}-{attempt}-{call}"


def part_path(kind: str, source: str, unit: str, part: str, suffix: str = ".parquet") -> str:
    return f"{unit_dir(kind, source, unit)}/{part}{suffix}"


def commit_path(kind: str, source: str, unit: str) -> str:
    return f"{COMMITS_DIR}/{kind}/{source}/{unit}.json"


def errors_path(kind: str, source: str, unit: str, attempt: str | None = None) -> str:
    """The errors table an attempt wrote for a unit (None: the one name stores had before attempts)."""
    if attempt is None:
        return f"{ERRORS_DIR}/{kind}/{source}/{unit}.parquet"
    return f"{ERRORS_DIR}/{kind}/{source}/{unit}/{attempt}.parquet"


STREAM_SUFFIX = ".stream"


def stream_claim_name(shard: str) -> str:
    """The claim on a whole shard cut into units but streamed (no tar index yet): its units are only
    known while reading. Never a unit name: those end in the shard's name or `.pNNN`."""
    return f"{shard}{STREAM_SUFFIX}"


def cut_path(kind: str, source: str) -> str:
    return f"{CUTS_DIR}/{kind}/{check_name('source', source)}.json"


def claim_dir(kind: str, source: str, name: str) -> str:
    return f"{CLAIMS_DIR}/{kind}/{source}/{name}"


def claim_path(kind: str, source: str, name: str, generation: int) -> str:
    return f"{claim_dir(kind, source, name)}/g{generation:06d}.json"


def quarantine_path(record_path: str, stamp: str) -> str:
    """Where `validate --uncommit-damaged` moves a commit record: `_quarantine/` + its path, stamped."""
    return f"{QUARANTINE_DIR}/{record_path[: -len('.json')]}.{stamp}.json"


# The files the store's writers make, by pattern: what `validate --gc` may ever remove. A file of
# any other name under a kind's folder (an input shard, a user's notes) is never touched.
_PART = r"p\d{7,}-[0-9a-f]{8,}(?:-[0-9a-f]{8})?"
_SUFFIX = r"(?:\.parquet|\.images\.parquet|\.zarr(?:/.*)?)"
_TMP = r"(?:\.tmp-[0-9a-f]{8})?"  # a local write killed before its rename
_UNIT = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
STORE_FILES = {
    "part": re.compile(rf"^(?P<kind>clip|sam)/(?P<source>{_UNIT})/(?P<unit>{_UNIT})/{_PART}{_SUFFIX}{_TMP}$"),
    "errors": re.compile(
        rf"^{ERRORS_DIR}/(?P<kind>clip|sam)/(?P<source>{_UNIT})/(?P<unit>{_UNIT}?)(?:/[0-9a-f]{{8,}})?\.parquet{_TMP}$"
    ),
    "record temporary": re.compile(
        rf"^{COMMITS_DIR}/(?P<kind>clip|sam)/(?P<source>{_UNIT})/(?P<unit>{_UNIT})\.json\.tmp-[0-9a-f]{{8}}$"
    ),
    "claim": re.compile(
        rf"^{CLAIMS_DIR}/(?P<kind>clip|sam)/(?P<source>{_UNIT})/(?P<unit>{_UNIT})/g\d{{6}}\.json{_TMP}$"
    ),
}


_ATTEMPT_IN_NAME = re.compile(r"/p\d{7,}-([0-9a-f]{12})-[0-9a-f]{8}[./]|/([0-9a-f]{12})\.parquet")


def attempt_of(rel: str) -> str | None:
    """The id of the job attempt that wrote a part file or an errors table, from its name (None for
    files named before attempts, and for other files)."""
    m = _ATTEMPT_IN_NAME.search(rel)
    return (m.group(1) or m.group(2)) if m else None


def store_file(rel: str) -> tuple[str, str, str, str] | None:
    """(what, kind, source, unit) of a ROOT-relative path the store's writers could have written under
    a kind's data, errors or claims folder, else None. For a claim, `unit` is the claim's name (a unit,
    or `SHARD.stream`)."""
    for what, pattern in STORE_FILES.items():
        m = pattern.match(rel)
        if m:
            return what, m["kind"], m["source"], m["unit"]
    return None


def text_path(name: str) -> str:
    return f"{TEXT_DIR}/{check_name('text table', name)}.parquet"


def index_dir(name: str) -> str:
    return f"{INDEXES_DIR}/{check_name('index', name)}"


def query_path(checksum: str) -> str:
    return f"{QUERIES_DIR}/{check_name('query set', checksum)}.parquet"


def subset_path(name: str, suffix: str = ".parquet") -> str:
    return f"{SUBSETS_DIR}/{check_name('subset', name)}{suffix}"
