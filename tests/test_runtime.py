"""vheat_jax.runtime: XLA flag merging and the one-time re-exec with glibc's huge-page tunable."""

import os
import platform
import subprocess
import sys

import pytest

from vheat_jax import runtime

PRINT_AFTER_REEXEC = (
    "import os, sys; from vheat_jax import runtime; runtime.reexec_with_huge_pages(); "
    "print(os.environ.get('GLIBC_TUNABLES', ''), sys.argv[1:])"
)


def test_add_xla_flags_keeps_the_users_setting(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_cpu_experimental_ynn_fusion_type=dot")
    result = runtime.add_xla_flags(("--xla_cpu_experimental_ynn_fusion_type=individual_dot", "--xla_cpu_foo=1"))
    assert result.split() == ["--xla_force_host_platform_device_count=8",
                              "--xla_cpu_experimental_ynn_fusion_type=dot", "--xla_cpu_foo=1"]
    assert os.environ["XLA_FLAGS"] == result


def _run(env_changes):
    env = {key: value for key, value in os.environ.items() if key not in ("GLIBC_TUNABLES", runtime.DISABLE_ENV)}
    env.update(env_changes)
    out = subprocess.run([sys.executable, "-c", PRINT_AFTER_REEXEC, "arg1"], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the tunable exists in glibc only")
def test_reexec_adds_the_tunable_once_and_keeps_arguments_and_other_tunables():
    assert _run({}) == "glibc.malloc.hugetlb=1 ['arg1']"
    assert _run({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}) == (
        "glibc.malloc.trim_threshold=1:glibc.malloc.hugetlb=1 ['arg1']")
    assert _run({runtime.DISABLE_ENV: "0"}) == "['arg1']"
