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


@pytest.fixture(scope="session")
def vheat_fixtures() -> Path:
    if not VHEAT_FIXTURES.exists():
        pytest.fail(f"golden fixtures missing at {VHEAT_FIXTURES}; tests must run beside ../shared")
    return VHEAT_FIXTURES
