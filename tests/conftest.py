"""Shared test helpers: where the golden fixtures live, and a script on several host devices."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# The suite is compile bound on CI's two cores: in-process tests compile at XLA's optimization
# level 0 (the UperNet trainer test: 151 s -> 105 s here), as the training subprocesses already
# do (train_support.subprocess_env). Every numerics test passes at either level; users run the
# default, so test_fixture_parity.py checks the logits there too, in a fresh interpreter with
# VHEAT_TESTS_DEFAULT_XLA=1.
if os.environ.get("VHEAT_TESTS_DEFAULT_XLA") != "1":
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

ROOT = Path(__file__).resolve().parents[1]
# The repository's byte-identical copy of ../shared/fixtures (checked by test_fixture_manifest.py),
# so that a clone anywhere runs the numerical spec.
FIXTURES = ROOT / "tests" / "fixtures"
VHEAT_FIXTURES = FIXTURES / "vheat_torch"
VHEAT_CASES = ("tiny_prenorm", "tiny_postnorm_ls")


def load_case(case: str):
    """(json metadata, npz arrays) of one vheat_torch fixture case."""
    meta = json.loads((VHEAT_FIXTURES / f"{case}.json").read_text())
    return meta, np.load(VHEAT_FIXTURES / f"{case}.npz")


def run_on_host_devices(script: str, count: int) -> None:
    """Runs ``python -c script`` on ``count`` XLA:CPU devices (a fresh process: the flag must precede jax's
    start) and asserts it exits 0 with its last line ``OK``."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={count}", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]


def nchw_to_nhwc(x):
    return np.asarray(x).transpose(0, 2, 3, 1)


@pytest.fixture(scope="session")
def vheat_fixtures() -> Path:
    if not VHEAT_FIXTURES.exists():
        pytest.fail(f"golden fixtures missing at {VHEAT_FIXTURES}; restore tests/fixtures from git")
    return VHEAT_FIXTURES
