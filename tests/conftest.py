"""Shared test helpers: where the golden fixtures live."""

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"
VHEAT_FIXTURES = FIXTURES / "vheat_torch"
VHEAT_CASES = ("tiny_prenorm", "tiny_postnorm_ls")


def load_case(case: str):
    """(json metadata, npz arrays) of one vheat_torch fixture case."""
    meta = json.loads((VHEAT_FIXTURES / f"{case}.json").read_text())
    return meta, np.load(VHEAT_FIXTURES / f"{case}.npz")


def nchw_to_nhwc(x):
    return np.asarray(x).transpose(0, 2, 3, 1)


# The files that take longest run first, so the two xdist workers (a file each at a time)
# do not end with one of them alone on a long file. Measured with --durations in CI.
SLOW_FIRST = ("test_task_guarantees.py", "test_seg_train.py", "test_det_train.py", "test_train_preemption_multihost.py",
              "test_gcs.py", "test_train_faults.py", "test_train_sharding.py", "test_train_distributed.py",
              "test_model.py", "test_loader_strict.py", "test_device_suite.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)  # stable: tests keep their order within a file


@pytest.fixture(scope="session")
def vheat_fixtures() -> Path:
    if not VHEAT_FIXTURES.exists():
        pytest.fail(f"golden fixtures missing at {VHEAT_FIXTURES}; tests must run beside ../shared")
    return VHEAT_FIXTURES
