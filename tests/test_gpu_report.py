"""bench/gpu_report.py turns bench/gpu_session.sh's files into docs/gpu.md's tables."""

import json
import subprocess
import sys

from conftest import ROOT


def _write(folder, name, payload):
    (folder / name).write_text(payload if isinstance(payload, str) else json.dumps(payload))


def test_the_tables_mark_the_fastest_form_and_the_distance_from_each_ceiling(tmp_path):
    hco = [{"resolution": 56, "channels": 96, "batch": 128, "form": form, "forward_backward_ms": ms}
           for form, ms in (("einsum", 3.0), ("channel_major", 2.0), ("fused_separable", 1.25))]
    _write(tmp_path, "forms.json", {"sections": {"hco_forms": hco, "dwconv_forms": []}})
    _write(tmp_path, "profile_train.json", {
        "what": "train", "model": "vheat_tiny", "batch": 128, "dtype": "bfloat16", "hco_form": "auto",
        "wall_ms_per_iter_while_tracing": 43.0, "copy_rate_gb_s": 4300.0,
        "categories_ms": {"MLP": 9.0, "ops without metadata": 1.0}, "memory_ceiling_ms": {"MLP": 3.0}})
    _write(tmp_path, "train_variants.jsonl", json.dumps(
        {"hco_form": "auto", "scan_blocks": True, "images_per_s": 3100.5, "first_step_s_incl_compile": 40.2}) + "\n")
    figures = {key: {"median": value} for key, value in (("cold_train_compile_s", 95.0), ("warm_train_compile_s", 4.0),
                                                          ("cold_eval_compile_s", 20.0), ("cold_train_step_s", 0.04))}
    _write(tmp_path, "compile.json", {"xla_flags": "", "rows": [{"model": "vheat_tiny", "scan_blocks": False,
                                                                  **figures}]})
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_report.py"), str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    assert "| 56x56x96 | 2.000 | 3.000 | **1.250** |" in out  # forms sorted by name; the fastest in bold
    assert "| MLP | 9.00 | 3.00 | 3.0x |" in out and "| ops without metadata | 1.00 | - | - |" in out
    assert "| auto | True | 3100.5 | 40.2 |" in out
    assert "| vheat_tiny | False | 95.0 | 4.0 | 20.0 | 0.04 |" in out


def test_a_missing_folder_is_one_line():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_report.py"), "/no/such/folder"],
                            capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.strip().startswith("usage:") and "Traceback" not in result.stderr
