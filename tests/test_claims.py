"""Claims (pipeline.materialize.claims) on a real store directory: taken once, renewed by generation, taken over
only when expired by the store's clock or when their driver on this machine is gone."""

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from pipeline.materialize.claims import (
    Claim,
    ClaimKeeper,
    Holder,
    clear_claim,
    generations,
    holder_of,
    remove_claims,
    renew_claim,
    take_claim,
    this_driver,
)
from storage_schemas.store import layout
from storage_schemas.store.root import StoreRoot


def take(storage, attempt, lease_s=60.0, driver=None, name="00042"):
    return take_claim(storage, "clip", "cc12m", name, attempt, lease_s, driver or this_driver())


def test_a_claim_is_held_by_one_attempt_and_renewed_by_generations(tmp_path):
    storage = StoreRoot(str(tmp_path))
    mine = take(storage, "aaaaaaaaaaaa")
    assert isinstance(mine, Claim)
    assert mine.generation == 0
    theirs = take(storage, "bbbbbbbbbbbb")
    assert isinstance(theirs, Holder)
    assert theirs.attempt == "aaaaaaaaaaaa"
    assert theirs.live
    assert take(storage, "aaaaaaaaaaaa") == mine  # a read task of ours retried by Ray keeps it
    renewed = renew_claim(storage, mine)
    assert renewed.generation == 1
    assert holder_of(storage, "clip", "cc12m", "00042", "bbbbbbbbbbbb").generation == 1
    # Renewing from a copy of generation 0 again is the same create, retried: ours, not a second claim.
    assert renew_claim(storage, mine) == renewed
    assert renew_claim(storage, renewed).generation == 2


def test_an_expired_claim_is_taken_over_once_and_its_holder_learns_it(tmp_path):
    storage = StoreRoot(str(tmp_path))
    # A live driver (this test's own process) that stopped renewing: only the lease can free it.
    old = take(storage, "aaaaaaaaaaaa", lease_s=0.5)
    assert isinstance(take(storage, "bbbbbbbbbbbb"), Holder)
    time.sleep(0.6)
    new = take(storage, "bbbbbbbbbbbb")
    assert isinstance(new, Claim)
    assert new.generation == 1
    assert new.took_over == "aaaaaaaaaaaa"
    assert isinstance(take(storage, "cccccccccccc"), Holder)  # the new holder's claim is live
    assert renew_claim(storage, old) is None


def test_a_claim_whose_driver_on_this_machine_is_gone_is_taken_at_once(tmp_path):
    storage = StoreRoot(str(tmp_path))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_driver = this_driver().rsplit(":", 1)[0] + ":" + gone.stdout.strip()
    take(storage, "aaaaaaaaaaaa", lease_s=3600, driver=dead_driver)
    new = take(storage, "bbbbbbbbbbbb")
    assert isinstance(new, Claim)
    assert new.took_over == "aaaaaaaaaaaa"
    # On another machine a process id means nothing here: only the lease frees that claim.
    take(storage, "aaaaaaaaaaaa", lease_s=3600, driver="elsewhere/boot:" + gone.stdout.strip(), name="00043")
    assert isinstance(take(storage, "bbbbbbbbbbbb", name="00043"), Holder)


def test_the_keeper_renews_releases_and_drops_claims(tmp_path):
    storage = StoreRoot(str(tmp_path))
    keeper = ClaimKeeper(storage, lease_s=0.6).start()
    for name in ("00001", "00002", "00003"):
        keeper.hold(take(storage, "aaaaaaaaaaaa", lease_s=0.6, name=name))
    time.sleep(1.5)  # past two leases: a claim not renewed would have expired
    for name in ("00001", "00002", "00003"):
        assert isinstance(take(storage, "bbbbbbbbbbbb", name=name), Holder), name
    assert holder_of(storage, "clip", "cc12m", "00001", "bbbbbbbbbbbb").generation >= 2
    keeper.drop_committed("clip", "cc12m", "00001")  # committed: every generation goes
    keeper.release(("clip", "cc12m", "00002"))  # given up: free for others at once
    assert not storage.list_files(layout.claim_dir("clip", "cc12m", "00001"))
    assert isinstance(take(storage, "bbbbbbbbbbbb", name="00002"), Claim)
    keeper.close()  # releases 00003
    assert isinstance(take(storage, "bbbbbbbbbbbb", name="00003"), Claim)
    assert keeper.lost == 0


def test_two_jobs_taking_over_one_expired_claim_cannot_both_get_it(tmp_path):
    storage = StoreRoot(str(tmp_path))
    take(storage, "aaaaaaaaaaaa", lease_s=0.2)
    time.sleep(0.3)
    barrier = threading.Barrier(4)

    def contend(attempt: str):
        barrier.wait()
        return take(storage, attempt)

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(contend, [f"{c}" * 12 for c in "bcde"]))
    winners = [g for g in got if isinstance(g, Claim)]
    assert len(winners) == 1, got
    assert winners[0].took_over == "aaaaaaaaaaaa", got
    assert all(isinstance(g, Holder) and g.live for g in got if g is not winners[0])


def test_released_or_cleared_claims_never_hide_a_later_holder(tmp_path):
    storage = StoreRoot(str(tmp_path))
    old = take(storage, "aaaaaaaaaaaa", lease_s=0.2)
    time.sleep(0.3)
    new = take(storage, "bbbbbbbbbbbb")  # generation 1 over the expired 0
    clear_claim(storage, "clip", "cc12m", "00042", upto=old.generation)  # a stale release: a later one is there
    assert generations(storage, "clip", "cc12m", "00042") == [0, 1]
    storage.delete(layout.claim_path("clip", "cc12m", "00042", 0))  # generation 0 gone, 1 live
    assert isinstance(take(storage, "cccccccccccc"), Holder)  # creating 0 again is no claim
    assert generations(storage, "clip", "cc12m", "00042") == [1]
    clear_claim(storage, "clip", "cc12m", "00042", upto=new.generation)
    assert generations(storage, "clip", "cc12m", "00042") == []


def test_a_claim_removed_while_it_is_created_is_created_again(tmp_path, monkeypatch):
    """Another job removes a committed unit's claims between our create and its read-back."""
    storage = StoreRoot(str(tmp_path))
    take(storage, "aaaaaaaaaaaa")
    fs, real = storage.fs, storage.fs.cat_file
    removed = []

    def vanish_once(path, *args, **kwargs):
        if not removed and path.endswith("g000000.json"):
            removed.append(path)
            remove_claims(storage, "clip", "cc12m", "00042")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(fs, "cat_file", vanish_once)
    claim = take(storage, "bbbbbbbbbbbb")
    assert removed
    assert isinstance(claim, Claim)
    assert claim.generation == 0
