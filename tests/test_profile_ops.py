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
    # Each part's memory ceiling is the bytes its ops move, at the copy rate measured in the same run.
    assert report["copy_rate_gb_s"] > 0 and PARTS <= set(report["hbm_mb"])
    for part in PARTS:
        ceiling = report["hbm_mb"][part] / report["copy_rate_gb_s"]
        assert report["hbm_mb"][part] > 0 and abs(report["memory_ceiling_ms"][part] - ceiling) <= 1e-3 + 0.01 * ceiling


# A GPU trace's shape (tsl's xplane schema): kernels on stream lines, each with its HLO instruction in an
# ``hlo_op`` stat (inline or interned); a module line spanning them; where the profiler derived it, an
# ``XLA Ops`` line holding the same time per instruction. Read back by jaxlib's own reader.
GPU_PLANE = """
planes {{
  id: 1 name: "/device:GPU:0"
  lines {{ id: 1 name: "XLA Modules" timestamp_ns: 1000
    events {{ metadata_id: 3 offset_ps: 0 duration_ps: 9000000 }} }}
  lines {{ id: 2 name: "Stream #13(Compute)" timestamp_ns: 1000
    events {{ metadata_id: 1 offset_ps: 0 duration_ps: 2000000 stats {{ metadata_id: 10 str_value: "fusion.3" }} }}
    events {{ metadata_id: 2 offset_ps: 2000000 duration_ps: 5000000 stats {{ metadata_id: 10 ref_value: 11 }} }} }}
  {xla_ops}
  event_metadata {{ key: 1 value {{ id: 1 name: "loop_add_fusion" }} }}
  event_metadata {{ key: 2 value {{ id: 2 name: "sm90_xmma_gemm_bf16bf16_bf16f32" }} }}
  event_metadata {{ key: 3 value {{ id: 3 name: "jit_train_step" }} }}
  event_metadata {{ key: 4 value {{ id: 4 name: "%fusion.3 = bf16[128,56,56,96] fusion(...)" }} }}
  stat_metadata {{ key: 10 value {{ id: 10 name: "hlo_op" }} }}
  stat_metadata {{ key: 11 value {{ id: 11 name: "custom-call.7" }} }}
}}
planes {{ id: 2 name: "/host:CPU"
  lines {{ id: 1 name: "XLA Ops" events {{ metadata_id: 1 duration_ps: 4000000 }} }}
  event_metadata {{ key: 1 value {{ id: 1 name: "host-side-op" }} }} }}
"""


def _gpu_planes(xla_ops: str = ""):
    from jax._src.lib import _profile_data

    return list(_profile_data.ProfileData.from_text_proto(GPU_PLANE.format(xla_ops=xla_ops)).planes)


def test_a_gpu_trace_counts_each_kernel_once_under_its_hlo_instruction():
    sys.path.insert(0, str(ROOT / "bench"))
    import profile_ops

    # The module line and the host plane are left out; cuBLAS's kernel is named by its custom call.
    assert profile_ops.op_times(_gpu_planes()) == {"fusion.3": 2000.0, "custom-call.7": 5000.0}
    # With a derived XLA Ops line, that line alone: the streams' kernels are the same time again.
    derived = 'lines { id: 3 name: "XLA Ops" events { metadata_id: 4 offset_ps: 0 duration_ps: 2500000 } }'
    assert profile_ops.op_times(_gpu_planes(derived)) == {"fusion.3": 2500.0}
