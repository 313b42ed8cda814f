"""bench/device_suite.sh end to end in its reduced CPU mode: every section runs and its numbers are sane.

The full mode (the paper's protocol on a GPU/TPU) is the same code with bigger shapes.
"""

import json
import math
import os
import subprocess
import sys

from conftest import ROOT

SECTIONS = {"matmul_peak", "throughput", "high_resolution", "train_step", "hco_forms", "dwconv_forms",
            "train_step_scanned", "train_step_fused"}


def test_device_suite_runs_end_to_end_in_cpu_mode(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_backend_optimization_level=0"}  # compiles dominate the reduced mode
    env.pop("PYTHONPATH", None)  # the wrapper sets it: the suite must run from the tree alone
    result = subprocess.run(["bash", str(ROOT / "bench" / "device_suite.sh"), str(tmp_path), "--mode", "cpu"],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "device_suite.json").read_text())
    assert report["mode"] == "cpu" and report["backend"] == "cpu" and set(report["sections"]) == SECTIONS
    sections = report["sections"]
    assert all(sections[name] for name in SECTIONS)
    for row in sections["throughput"] + sections["train_step"] + sections["train_step_scanned"] + sections[
            "train_step_fused"]:
        assert row["img_s"] > 0 and math.isfinite(row["img_s"]) and row["flops"] > 0
        assert row["model_flops"] > 0 and 0 < row["mfu_vs_measured_bf16_peak"] < 10  # the model's count
    # The scanned stage is the same model: the same count of the model's FLOPs, beside its own compile time.
    plain, scanned = sections["train_step"][0], sections["train_step_scanned"][0]
    assert (plain["scan_blocks"], scanned["scan_blocks"]) == (False, True)
    assert plain["model_flops"] == scanned["model_flops"] and scanned["compile_s"] > 0
    # The fused Pallas HCO ran on both reduced stages (8x8 and 4x4 maps).
    assert sections["train_step_fused"][0]["hco_form"] == "fused_kron,fused_kron"
    assert {row["dtype"] for row in sections["throughput"]} == {"float32", "bfloat16"}
    assert {row["model"] for row in sections["high_resolution"]} == {"vheat_tiny", "vit_deit_s"}
    # The forms timed are the same function: within float32 noise (HCO) and bfloat16 rounding (conv).
    assert {row["form"] for row in sections["hco_forms"]} >= {"einsum", "channel_major", "fft", "fused_kron",
                                                                 "fused_separable"}
    assert max(row["max_abs_diff_vs_einsum_f32"] for row in sections["hco_forms"]) < 1e-3
    assert max(row["max_abs_diff_vs_grouped"] for row in sections["dwconv_forms"]) < 0.05
