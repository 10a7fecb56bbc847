"""The per-kind manifest: what every unit of a kind in a store was made with.

Created once, before the first unit of its kind commits, and never rewritten. `must_match` holds
everything that changes the targets (schema version, teacher architecture and weights checksum,
preprocessing, compute dtype, view or prompt policy and seed, storage precision); a job whose
must-match fields differ is refused with the field named. `recorded` holds what is only worth
knowing (library versions, device, host, creation time).

The policy hash, sha256 of the canonical JSON of `must_match`, is copied into every commit
record, so a record made under another manifest is recognisable on its own.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from storage_schemas.plumbing.errors import ManifestMismatch, StoreError
from storage_schemas.store import layout
from storage_schemas.store.root import StoreRoot
from storage_schemas.store.tables import SCHEMA_VERSION


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Manifest:
    kind: str  # "clip" or "sam"
    must_match: dict[str, Any]  # nested; compared key by key
    recorded: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def build(
        kind: str, teacher: dict, compute_dtype: str, policy: dict, precision: str, recorded: dict | None = None
    ) -> "Manifest":
        """Assemble a manifest from its parts; `teacher` is `TeacherFingerprint.must_match()`."""
        must = {
            "schema_version": SCHEMA_VERSION,
            "teacher": teacher,
            "compute_dtype": compute_dtype,
            "policy": policy,
            "precision": precision,
        }
        # Normalise through JSON so an in-memory manifest compares equal to one read back.
        return Manifest(kind, json.loads(canonical_json(must)), dict(recorded or {}))

    @property
    def policy_hash(self) -> str:
        return hashlib.sha256(canonical_json(self.must_match).encode()).hexdigest()

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": self.kind,
                "policy_hash": self.policy_hash,
                "must_match": self.must_match,
                "recorded": self.recorded,
            },
            indent=2,
            sort_keys=True,
        )

    @staticmethod
    def from_json(text: str | bytes) -> "Manifest":
        d = json.loads(text)
        return Manifest(d["kind"], d["must_match"], d.get("recorded", {}))


def differences(stored: dict, new: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, stored value, new value) for every leaf where two nested dicts differ."""
    out = []
    for k in sorted(set(stored) | set(new)):
        a, b = stored.get(k, "<absent>"), new.get(k, "<absent>")
        key = f"{prefix}{k}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, key + ".")
        elif a != b:
            out.append((key, a, b))
    return out


def teacher_difference(stored: dict, job: dict) -> str | None:
    """The first field where a job's teacher fingerprint differs from a store's, as
    "teacher.KEY: store has A, job has B", or None when they are the same teacher."""
    diffs = differences(stored, job, "teacher.")
    if not diffs:
        return None
    key, a, b = diffs[0]
    return f"{key}: store has {a!r}, job has {b!r}"


def _short(v: Any) -> str:
    """A value for a one-line message: strings bare (a hash cut to 12 characters), others as JSON."""
    if isinstance(v, str):
        return v if len(v) <= 40 else v[:12] + "..."
    s = canonical_json(v)
    return s if len(s) <= 40 else s[:37] + "..."


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def read_manifest(storage: StoreRoot, kind: str) -> Manifest | None:
    rel = layout.manifest_path(kind)
    if not storage.exists(rel):
        return None
    try:
        manifest = Manifest.from_json(storage.read_bytes(rel))
    except (ValueError, KeyError, TypeError) as e:
        raise StoreError(f"{storage.url_of(rel)}: manifest does not parse ({e}); the store is damaged") from None
    version = manifest.must_match.get("schema_version") if isinstance(manifest.must_match, dict) else None
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"{storage.url_of(rel)}: schema version {version}; this code reads and writes version {SCHEMA_VERSION} "
            "(write to a new store URL)"
        )
    return manifest


def ensure_manifest(storage: StoreRoot, manifest: Manifest) -> Manifest:
    """Create the kind's manifest if absent, else check that the job's must-match fields agree.

    Returns the manifest in force. Raises `ManifestMismatch` naming every differing field.
    """
    rel = layout.manifest_path(manifest.kind)
    recorded = {"created_at": now_utc(), **manifest.recorded}
    new = Manifest(manifest.kind, manifest.must_match, recorded)
    # Whether this job or another created it, compare against what is stored: created only if
    # absent, so two jobs starting at once agree on one manifest.
    storage.create(rel, new.to_json().encode())
    stored = read_manifest(storage, manifest.kind)
    assert stored is not None, f"{rel} vanished after creation"
    check_compatible(storage.url, stored, manifest)
    return stored


def check_compatible(store_url: str, stored: Manifest, job: Manifest, unknown: tuple[str, ...] = ()) -> None:
    """Refuse a job whose must-match fields differ from the store's, naming each field; fields in
    `unknown` (dotted keys the job cannot know yet) are left out."""
    diffs = [d for d in differences(stored.must_match, job.must_match) if d[0] not in unknown]
    if diffs:
        shown = "; ".join(f"{k}: store has {_short(a)}, job has {_short(b)}" for k, a, b in diffs[:4])
        more = f" (+{len(diffs) - 4} more)" if len(diffs) > 4 else ""
        raise ManifestMismatch(
            f"store {store_url} ({job.kind}) was made with different must-match fields: "
            f"{shown}{more}; write these targets to a new store URL"
        )
