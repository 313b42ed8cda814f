"""bench/profile_ops.py on a tiny train step: the trace's op times add up to the table of parts it reports."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = {"HCO (DCT, decay, IDCT)", "depthwise conv", "LayerNorm", "MLP", "dense (HCO in/out)",
         "optimizer, EMA, loss, augmentation"}


def test_the_train_step_profile_splits_into_the_models_parts(tmp_path):
    out = tmp_path / "profile.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "profile_ops.py"), "--what", "train",
                             "--image-size", "32", "--batch", "2", "--iters", "1", "--out", str(out)],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    categories = report["categories_ms"]
    assert PARTS <= set(categories) and all(categories[part] > 0 for part in PARTS), categories
    assert abs(sum(categories.values()) - report["sum_of_op_ms_per_iter"]) < 0.01 * report["sum_of_op_ms_per_iter"]
    assert (report["what"], report["dtype"], report["scan_blocks"]) == ("train", "float32", False)
