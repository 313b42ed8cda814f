"""The gs:// workdir lease's verdicts, on a local folder (the lease logic is the same on any store).

tests/test_gcs.py runs the lease against the GCS server on loopback, where a read that
overlaps a rewrite comes back torn (gcsfs sizes the object, then fetches its bytes). Such a
read is what a live holder looks like mid-refresh; here it is pinned by storing the torn
text itself, so the verdict does not depend on the timing of two threads.
"""

import json
import os
import threading

import pytest

from vheat_jax.train.workdir_lock import LEASE_FILE, WorkdirLockedError, _Lease

LIVE = {"host": "other", "pid": 7, "run": "live", "since": 0.0, "heartbeat": 1.0}


def test_a_torn_lease_that_then_changes_is_a_live_holder(tmp_path):
    lease = tmp_path / LEASE_FILE
    lease.write_text(json.dumps(LIVE)[:25])  # what a read in the middle of the holder's rewrite returns
    # The holder's next refresh, written whole (an object store replaces an object at once; write_text would
    # truncate first, and a poll landing in between reads "", a change but one that names no holder).
    fresh = tmp_path / "fresh.json"
    fresh.write_text(json.dumps({**LIVE, "heartbeat": 2.0}))
    refresh = threading.Timer(0.5, lambda: os.replace(fresh, lease))
    refresh.start()
    try:
        with pytest.raises(WorkdirLockedError) as refused:
            _Lease(tmp_path, lease_s=4.0).acquire()
    finally:
        refresh.join()
    assert "pid 7 on other" in refused.value.args[1]
    assert json.loads(lease.read_text())["run"] == "live"  # the holder's lease is left alone


def test_an_unreadable_lease_that_never_changes_is_taken_over(tmp_path):
    lease = tmp_path / LEASE_FILE
    lease.write_text("not json")  # a holder that died leaving garbage
    taker = _Lease(tmp_path, lease_s=1.0)
    taker.acquire()
    try:
        assert json.loads(lease.read_text())["run"] == taker._owner["run"]
    finally:
        taker.release()
    assert not lease.exists()
