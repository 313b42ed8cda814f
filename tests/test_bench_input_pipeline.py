"""bench/input_pipeline.py end to end at a tiny size: photo folder, PSNR, pinned and worker rates
against an earlier checkout (this tree stands in for it), the per-stage profile, the JSON."""

import json
import os
import subprocess
import sys

from conftest import ROOT


def test_input_pipeline_bench_runs_and_reports_every_part(tmp_path):
    out = tmp_path / "input_pipeline.json"
    command = [sys.executable, str(ROOT / "bench" / "input_pipeline.py"), "--images", "24", "--batch", "4",
               "--batches", "1", "--warmup", "1", "--image-size", "64", "--repeats", "1", "--workers", "1",
               "--profile-images", "8", "--psnr-crops", "2", "--before", str(ROOT), "--core", "0",
               "--out", str(out)]
    result = subprocess.run(command, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {"china.jpg", "flower.jpg"} <= set(report["photos"]["sources"]) and report["photos"]["count"] == 24
    assert set(report["per_core_images_per_s"]) == {"this: scaled decode", "this: full decode", "before"}
    assert set(report["workers_images_per_s"]) == {"this: 1 workers", "before: 1 workers"}
    for rate in [*report["per_core_images_per_s"].values(), *report["workers_images_per_s"].values()]:
        assert rate["min"] > 0 and len(rate["runs"]) == 1
    for psnr in report["scaled_decode_psnr"].values():
        assert psnr["crops"] == psnr["decoded_at_full_size"] + psnr["scaled"] > 0
        assert psnr.get("psnr_db_min", 99) > 20
    stages = report["stage_ms_per_image_one_core"]
    assert {"decode_full", "randaugment", "transfer_uint8", "removed_host_normalize_float32"} <= set(stages)
    assert all(ms >= 0 for ms in stages.values())
    op_names = {name.split(" ", 1)[1] for name in stages if name.startswith("randaugment_op ")}
    assert len(op_names) == 15 and {"Rotate", "ShearX", "Equalize", "SharpnessIncreasing"} <= op_names
    assert 0 < stages["randaugment_expected_from_ops"] < max(stages[f"randaugment_op {n}"] for n in op_names)
