"""The end-of-job summary: a table for people, the same figures as JSON for programs, and where it is written."""

from __future__ import annotations

import datetime
import json
from collections import Counter
from dataclasses import asdict, dataclass, field

from storage_schemas.store.root import StoreRoot


@dataclass
class JobReport:
    kind: str
    units_done: int = 0  # committed by this run
    units_skipped: int = 0  # already committed before this run
    units_found_committed: int = 0  # committed by another job while this one ran
    units_found_claimed: int = 0  # read tasks that found their units claimed by another live job
    commit_races_lost: int = 0  # units this job finished but another job's record was there first
    claims_taken_over: int = 0  # expired claims of other jobs this one took over
    claims_lost: int = 0  # claims of this job another took over (it had let them lapse)
    units_failed: list[dict] = field(default_factory=list)  # {source, shard, unit, reason, detail}
    samples: int = 0  # input samples of the units committed by this run
    samples_stored: int = 0
    rows: Counter = field(default_factory=Counter)  # e.g. views, prompts
    errors_by_reason: Counter = field(default_factory=Counter)
    shard_notes: list[str] = field(default_factory=list)  # e.g. img2dataset counts that disagree
    bytes_written: int = 0
    seconds: float = 0.0  # from the dataset's start to the last commit
    first_target_seconds: float = 0.0  # from the dataset's start to the first target (start-up, first batch)
    storage_retries: Counter = field(default_factory=Counter)  # store operation -> transient errors retried
    leftovers_removed: int = 0  # files of dropped or killed attempts removed after their unit committed
    driver_bytes: int = 0  # bytes of the rows the driver pulled from the dataset
    commit_seconds: list[list[float]] = field(default_factory=list)  # [samples, seconds] per unit commit

    @property
    def shared(self) -> bool:
        """Whether another job worked on this store's units at the same time."""
        counts = (self.units_found_committed, self.units_found_claimed, self.commit_races_lost)
        return any(counts) or self.claims_taken_over > 0 or self.claims_lost > 0

    @property
    def ok(self) -> bool:
        return not self.units_failed

    def rate(self, rows: str) -> float:
        return self.rows[rows] / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rows"], d["errors_by_reason"] = dict(self.rows), dict(self.errors_by_reason)
        d["storage_retries"] = dict(self.storage_retries)
        d["rows_per_second"] = {k: round(self.rate(k), 2) for k in self.rows}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def table(self) -> str:
        lines = [
            f"{self.kind} targets",
            f"  units      {self.units_done} done, {self.units_skipped} skipped (already committed), "
            f"{len(self.units_failed)} failed",
            f"  samples    {self.samples} read, {self.samples_stored} stored, "
            f"{sum(self.errors_by_reason.values())} in errors",
        ]
        if self.shared:
            lines.append(
                f"  sharing    {self.units_found_committed} units committed by other jobs meanwhile, "
                f"{self.units_found_claimed} found claimed by them, {self.commit_races_lost} commit races lost; "
                f"claims: {self.claims_taken_over} expired taken over, {self.claims_lost} of ours taken over"
            )
        for name, n in sorted(self.rows.items()):
            lines.append(f"  {name:<10} {n} ({self.rate(name):.1f}/s over {self.seconds:.1f} s)")
        for reason, n in sorted(self.errors_by_reason.items()):
            lines.append(f"  error      {reason}: {n}")
        lines.append(
            f"  written    {self.bytes_written / 1e6:.2f} MB; first target after {self.first_target_seconds:.1f} s"
        )
        if self.storage_retries:
            lines.append(
                f"  storage    {sum(self.storage_retries.values())} transient errors retried ("
                + ", ".join(f"{op} {n}" for op, n in sorted(self.storage_retries.items()))
                + ")"
            )
        if self.leftovers_removed:
            lines.append(f"  leftovers  {self.leftovers_removed} files of re-run or killed attempts removed")
        for note in self.shard_notes:
            lines.append(f"  note       {note}")
        for f in self.units_failed:
            lines.append(f"  FAILED     {f['source']}/{f['unit']}: {f['reason']}: {f['detail']}")
        return "\n".join(lines)


def write_report(storage: StoreRoot, reports: list[JobReport], local_path: str | None, attempt: str) -> None:
    """The job's summary into the store's `_reports/materialize-STAMP-ATTEMPT.json`, and `local_path` if given."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps({"store": storage.url, "attempt": attempt, "reports": [r.to_dict() for r in reports]}, indent=2)
    storage.write_bytes(f"_reports/materialize-{stamp}-{attempt}.json", text.encode())
    if local_path:
        with open(local_path, "w") as f:
            f.write(text)
