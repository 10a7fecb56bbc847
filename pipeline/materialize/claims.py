"""Claims: which job is working on which unit, so that jobs sharing one store share the work.

    claim = take_claim(storage, "clip", "cc12m", "00042", attempt, lease_s=300, driver=this_driver())
    if isinstance(claim, Claim): ...read the unit...       # else: another live job holds it
    keeper = ClaimKeeper(storage, lease_s); keeper.hold(claim)   # the driver renews it until
    keeper.drop_committed(...)                                   # its unit commits

A claim never decides what is stored: the commit record, created only if absent, does. Claims only
keep two jobs from doing the same unit at the same time; when they fail to (a paused job, a claim
taken over a moment before its holder renews it), work is duplicated and the commit decides.

Layout: `_claims/KIND/SOURCE/NAME/gNNNNNN.json`, NAME a unit or `SHARD.stream` (a shard cut into
units but streamed, whose units are only known while reading). Each generation is created only if
absent and holds {attempt, generation, lease_s, driver}; the newest generation is the claim.
Its holder renews it by creating the next generation every third of the lease; a claim whose
newest generation is older than its lease, measured by the store's own timestamps against a
probe written now (never a host's clock), may be taken over by creating the next generation. So
may one whose driver ran on this very machine and is gone (a job killed and run again at once
need not wait out the lease): `driver` names the machine (host name and boot id) and the
driver's process id.
Two jobs taking one claim over at once cannot both create that generation: one wins, the other
sees a live claim. Once a unit is committed, every claim on it is garbage and is removed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from functools import cache

from storage_schemas.store import layout
from storage_schemas.store.root import StorageFailure, StoreRoot

log = logging.getLogger(__name__)

_GENERATION = re.compile(r"/g(\d{6})\.json$")
TAKE_ROUNDS = 3  # a claim contended this many times in a row is left to the others


@cache
def this_machine() -> str:
    """This machine's name, boot id and process-id namespace: two machines, two boots of one, or
    two containers of one host (each with its own process ids) never share it."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        pids = os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # not Linux: a process id is never judged gone
        return f"{socket.gethostname()}/unknown"
    return f"{socket.gethostname()}/{boot}/{pids}"


def this_driver() -> str:
    """The `driver` a job's claims carry: this machine and this process."""
    return f"{this_machine()}:{os.getpid()}"


def driver_gone(driver: str) -> bool:
    """Whether `driver` ran on this machine and its process has exited. False whenever unsure."""
    machine, _, pid = driver.rpartition(":")
    if machine != this_machine() or machine.endswith("/unknown") or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by another user
        return False
    return False


@dataclass(frozen=True)
class Claim:
    """A claim this attempt holds: its newest generation is ours."""

    kind: str
    source: str
    name: str
    generation: int
    attempt: str
    lease_s: float
    driver: str  # `this_driver()` of the job's driver
    took_over: str = ""  # the attempt whose expired claim this one replaced, if any

    @property
    def key(self) -> tuple[str, str, str]:
        return self.kind, self.source, self.name

    def body(self) -> bytes:
        info = dict(attempt=self.attempt, generation=self.generation, lease_s=self.lease_s, driver=self.driver)
        return json.dumps(info, sort_keys=True).encode()

    def next(self) -> "Claim":
        return Claim(self.kind, self.source, self.name, self.generation + 1, self.attempt, self.lease_s, self.driver)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "Claim":
        return Claim(**json.loads(text))


@dataclass(frozen=True)
class Holder:
    """The newest generation of a claim that is not ours."""

    attempt: str
    generation: int
    age_s: float  # by the store's clock
    lease_s: float
    driver: str = ""

    @property
    def live(self) -> bool:
        return self.age_s < self.lease_s and not driver_gone(self.driver)


def generations(storage: StoreRoot, kind: str, source: str, name: str) -> list[int]:
    """The claim's generations in the store, oldest first."""
    found = storage.list_files(layout.claim_dir(kind, source, name))
    return sorted(int(m.group(1)) for rel in found if (m := _GENERATION.search(rel)))


def newest_generation(storage: StoreRoot, kind: str, source: str, name: str) -> tuple[int, dict] | None:
    """(generation, its content) of the claim's newest generation, or None when unclaimed."""
    found = generations(storage, kind, source, name)
    if not found:
        return None
    g = found[-1]
    try:
        info = json.loads(storage.read_bytes(layout.claim_path(kind, source, name, g)))
    except FileNotFoundError:  # released or cleaned up between the listing and the read
        return None
    return g, info


def holder_of(
    storage: StoreRoot, kind: str, source: str, name: str, attempt: str, now: float | None = None
) -> Holder | None:
    """Who else holds the claim NAME (live or not), or None when it is free or ours. `now`: the
    store's clock (`StoreRoot.store_now`), probed here if not given."""
    newest = newest_generation(storage, kind, source, name)
    if newest is None or newest[1].get("attempt") == attempt:
        return None
    g, info = newest
    try:
        written = storage.modified(layout.claim_path(kind, source, name, g))
    except FileNotFoundError:
        return None
    now = storage.store_now() if now is None else now
    lease_s, driver = float(info.get("lease_s", 0)), str(info.get("driver", ""))
    return Holder(str(info.get("attempt")), g, now - written, lease_s, driver)


def take_claim(
    storage: StoreRoot, kind: str, source: str, name: str, attempt: str, lease_s: float, driver: str
) -> Claim | Holder:
    """Claim NAME for `attempt`: create generation 0 (one request when nobody ever claimed it),
    else keep a claim that is already ours (a retried read task), else take over an expired one by
    creating the next generation. Returns the claim, or the live holder that keeps it."""
    claim = Claim(kind, source, name, 0, attempt, lease_s, driver)
    if storage.create(layout.claim_path(kind, source, name, 0), claim.body()):
        found = generations(storage, kind, source, name)
        if found == [0]:
            return claim
        if found:
            # Generation 0 was gone (a released or cleared claim) while a later one is there: ours
            # is no claim at all. Take it back and judge the newest like any other.
            storage.delete(layout.claim_path(kind, source, name, 0))
        # else: the claims were removed right after our create (the unit was committed meanwhile)
    holder = None
    for _ in range(TAKE_ROUNDS):
        newest = newest_generation(storage, kind, source, name)
        if newest is None:  # its claims were removed (unit committed, or released) since: start over
            g, previous = -1, ""
        else:
            g, info = newest
            if info.get("attempt") == attempt:
                return Claim(kind, source, name, g, attempt, lease_s, driver)
            holder = holder_of(storage, kind, source, name, attempt)
            if holder is None:
                continue
            if holder.live:
                return holder
            previous = holder.attempt
        claim = Claim(kind, source, name, g + 1, attempt, lease_s, driver, took_over=previous)
        if storage.create(layout.claim_path(kind, source, name, g + 1), claim.body()):
            return claim
    # Contended every round: others are taking it over right now, so leave it to them.
    return holder or Holder(attempt="contended", generation=-1, age_s=0.0, lease_s=lease_s)


def renew_claim(storage: StoreRoot, claim: Claim) -> Claim | None:
    """The next generation of a claim we hold, or None when another job created it first (our
    claim had expired and was taken over: the work goes on, the commit decides)."""
    nxt = claim.next()
    return nxt if storage.create(layout.claim_path(*claim.key, nxt.generation), nxt.body()) else None


def remove_claims(storage: StoreRoot, kind: str, source: str, name: str) -> None:
    """Remove every generation of a claim on a unit that is committed: all of them are garbage."""
    storage.remove(layout.claim_dir(kind, source, name))


def clear_claim(storage: StoreRoot, kind: str, source: str, name: str, upto: int) -> None:
    """Remove the claim's generations up to `upto` (a holder releasing its claim, with the expired
    ones it took over; or a claim whose holder is gone), unless a later generation shows that
    another job holds it now. Newest first, so the claim never looks younger than it is."""
    found = generations(storage, kind, source, name)
    if found and found[-1] > upto:
        return
    for g in reversed(found):
        storage.delete(layout.claim_path(kind, source, name, g))


@dataclass
class _Held:
    claim: Claim  # its newest generation
    renewed_at: float  # time.monotonic() of the newest generation's creation, as the driver saw it


@dataclass
class ClaimKeeper:
    """The driver's claims: renewed every third of the lease from a thread of their own, so that
    a slow batch never lets them lapse; released when their unit commits or the job ends."""

    storage: StoreRoot
    lease_s: float
    held: dict[tuple[str, str, str], _Held] = field(default_factory=dict)
    lost: int = 0  # claims another job took over while we held them
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> "ClaimKeeper":
        self._thread = threading.Thread(target=self._renew_loop, name="claim-keeper", daemon=True)
        self._thread.start()
        return self

    def hold(self, claim: Claim) -> None:
        """Renew `claim` from now on. Its first renewal comes at the next tick: the claim reached the
        driver through the teacher stage, however long its rows queued there."""
        with self._lock:
            held = self.held.get(claim.key)
            if held is None or held.claim.generation < claim.generation:
                self.held[claim.key] = _Held(claim, renewed_at=float("-inf"))

    def drop_committed(self, kind: str, source: str, name: str) -> None:
        """The unit is committed (by us or another job): every claim on it goes."""
        with self._lock:  # no renewal of it is under way once we have the lock, none starts after
            self.held.pop((kind, source, name), None)
        try:
            remove_claims(self.storage, kind, source, name)
        except (StorageFailure, OSError) as e:
            log.warning("claims of %s/%s/%s not removed (%s); `validate --gc` removes them", kind, source, name, e)

    def release(self, key: tuple[str, str, str]) -> None:
        """Give a claim up without committing (its unit failed, or the job ends): its generations
        go, so another job may take the unit at once instead of waiting out the lease."""
        with self._lock:
            held = self.held.pop(key, None)
        if held is None:
            return
        try:
            clear_claim(self.storage, *key, held.claim.generation)
        except (StorageFailure, OSError) as e:
            log.warning("claim %s not released (%s); it expires after its lease", "/".join(key), e)

    def close(self) -> None:
        """Stop renewing and release what is still held."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for key in list(self.held):
            self.release(key)

    def _renew_loop(self) -> None:
        interval = self.lease_s / 3
        while not self._stop.wait(min(max(interval / 4, 0.1), 5.0)):
            with self._lock:
                due = [k for k, h in self.held.items() if time.monotonic() - h.renewed_at >= interval]
            for key in due:
                with self._lock:  # a store request under the lock: the driver waits for one at most
                    held = self.held.get(key)
                    if held is None:
                        continue  # committed or released meanwhile
                    try:
                        nxt = renew_claim(self.storage, held.claim)
                    except (StorageFailure, OSError) as e:  # tried again at the next tick
                        log.warning("claim %s not renewed (%s)", "/".join(key), e)
                        continue
                    if nxt is None:
                        del self.held[key]
                        self.lost += 1
                        log.warning("claim %s was taken over by another job; the commit decides", "/".join(key))
                    else:
                        self.held[key] = _Held(nxt, time.monotonic())
