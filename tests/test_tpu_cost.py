"""bench/tpu_cost.py's reading of optimized TPU HLO (the compile itself needs libtpu, so it is run by hand).

The HLO below has the shape of libtpu's output: operands named without shapes, tiled layouts,
VMEM buffers marked S(1), fusion bodies as separate computations.
"""

import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import tpu_cost  # noqa: E402

HLO = """HloModule jit_train_step, is_scheduled=true

%fused_computation.1 (param_0: bf16[64,56,56,96]) -> bf16[64,56,56,96] {
  %param_0 = bf16[64,56,56,96]{3,2,1,0:T(8,128)(2,1)} parameter(0)
  ROOT %multiply.9 = bf16[64,56,56,96]{3,2,1,0:T(8,128)(2,1)} multiply(%param_0, %param_0), metadata={op_name="jit(train_step)/jvp(VHeat)/layers_0/blocks_0/op/mul"}
}

ENTRY %main.1 (p0: bf16[64,56,56,96], p1: f32[96]) -> bf16[64,56,56,96] {
  %p0 = bf16[64,56,56,96]{3,2,1,0:T(8,128)(2,1)} parameter(0), metadata={op_name="x"}
  %p1 = f32[96]{0:T(128)} parameter(1)
  %fusion.1 = bf16[64,56,56,96]{3,2,1,0:T(8,128)(2,1)} fusion(%p0), kind=kLoop, calls=%fused_computation.1, metadata={op_name="jit(train_step)/jvp(VHeat)/layers_0/blocks_0/op/mul"}
  %fusion.2 = bf16[64,56,56,96]{3,2,1,0:T(8,128)(2,1)S(1)} fusion(%fusion.1, %p1), kind=kLoop, calls=%fused_computation.1, metadata={op_name="jit(train_step)/jvp(VHeat)/layers_0/blocks_0/norm1/add"}
  %tuple.3 = (bf16[64,56,56,96]{3,2,1,0:T(8,128)(2,1)S(1)}) tuple(%fusion.2)
  %slice-start.7 = ((f32[96]{0:T(128)}), f32[48]{0:T(128)S(3)}, s32[]{:S(2)}) slice-start(%p1), slice={[0:48]}
  %slice-done.7 = f32[48]{0:T(128)S(3)} slice-done(%slice-start.7)
  ROOT %add.4 = f32[96]{0:T(128)} add(%p1, %p1), metadata={op_name="jit(train_step)/add"}
}
"""


def test_hbm_bytes_of_top_level_ops_by_model_part():
    activation = 64 * 56 * 56 * 96 * 2
    parts = tpu_cost.bytes_by_category(HLO)
    # fusion.1 reads p0 and writes its result; the fusion body's multiply is not counted again.
    assert parts["HCO (DCT, decay, IDCT)"] == 2 * activation
    # fusion.2 writes to VMEM (S(1)): only its HBM operands count.
    assert parts["LayerNorm"] == activation + 96 * 4
    assert parts["optimizer, EMA, loss, augmentation"] == 3 * 96 * 4
    # A prefetch into v4's S(3) reads its HBM source once; its destination and done are on chip.
    assert parts["compiler's copies and slices (no model op named)"] == 96 * 4
    assert len(parts) == 4


def test_reread_recomputes_the_roofline_from_kept_hlo(tmp_path):
    (tmp_path / "v4_step.hlo.txt").write_text(HLO)
    row = {"chip": "v4", "hlo": "v4_step", "flops": 1.0e9, "images_per_device": 64, "hbm_bytes": 1.0}
    tpu_cost.reread({"train_step": [row]}, tmp_path)
    hbm = 3 * 64 * 56 * 56 * 96 * 2 + 96 * 4 + 3 * 96 * 4 + 96 * 4
    assert row["hbm_bytes"] == hbm
    assert row["memory_s"] == hbm / 600e9  # a v4 chip's 1200 GB/s over its two devices
    assert row["bound"] == "memory" and row["roofline_s"] == row["memory_s"]
    assert row["roofline_img_s_per_chip"] == 64 / row["roofline_s"] * 2
    aborted = {"chip": "v4", "compiler_error": "Check failed"}
    tpu_cost.reread({"stage_forms": [aborted]}, tmp_path)  # nothing to recompute
    with pytest.raises(ValueError, match="names no kept HLO"):
        tpu_cost.reread({"train_step": [{"chip": "v4", "flops": 1.0e9}]}, tmp_path)


def test_category_names_the_part_of_the_model():
    assert tpu_cost.category("jit(train_step)/transpose(jvp(VHeat))/layers_1/blocks_0/op/dwconv/mul") == "depthwise conv"
    assert tpu_cost.category("jit(train_step)/jvp(VHeat)/layers_2/blocks_3/mlp/fc1/dot_general") == "MLP"
    assert tpu_cost.category("jit(train_step)/jvp(VHeat)/layers_0/blocks_0/op/to_k/dot_general") == "decay (to_k, pow)"
    assert tpu_cost.category("jit(train_step)/jvp(VHeat)/layers_0/blocks_0/op/dot_general") == "HCO (DCT, decay, IDCT)"
    assert tpu_cost.category("jit(train_step)/adam/mul") == "optimizer, EMA, loss, augmentation"


def test_tables_derive_per_image_figures_and_shares_from_a_report():
    step = {"chip": "v4", "model": "vheat_tiny", "size": 224, "kron_max_tokens": 64, "library_rule": True,
            "flops": 64 * 27.0e9, "images_per_device": 64, "hbm_bytes": 4.0e10, "hbm_bytes_per_image": 4.0e10 / 64,
            "xla_bytes_accessed": 6.4e10, "compute_s": 0.0128, "memory_s": 0.0667, "roofline_img_s_per_chip": 1919.0,
            "mfu_bound": 0.19, "hbm_bytes_by_part": {"MLP": 3.0e10, "LayerNorm": 1.0e10}}
    vit = {"chip": "v3", "flops": 64 * 13.8e9, "images_per_device": 64, "hbm_bytes_per_image": 2.5e8,
           "roofline_img_s_per_chip": 3112.0, "published_img_s_per_chip": [1100.0, 1300.0],
           "model_over_published": [2.39, 2.83]}
    aborted = {"chip": "v4", "op": "hco", "form": "fft", "resolution": 28, "channels": 192,
               "compiler_error": "F1202 13:36:37.431821    3450 fusion_emitter.cc:4581] Check failed: window.pad_low"}
    tables = tpu_cost.markdown_tables([{"train_step": [step], "vit_calibration": [vit], "stage_forms": [aborted]},
                                       {"form_choice": {"v4": {"hco@28": {"form": "kron", "cpu_form": "channel_major",
                                                                          "modelled_gain": 2.5}}}}])
    assert "| v4 | vheat_tiny@224 | 64 | 27 | 625 | 1000 | 12.8 | 66.7 | 1919 | 0.19 |" in tables
    assert "| v3 | 13.8 | 250 | 3112 | 1100-1300 | 2.39-2.83 |" in tables
    assert "| MLP | 75% |" in tables and "| LayerNorm | 25% |" in tables
    assert "| compiler abort: fusion_emitter.cc:4581] Check failed: window.pad_low |" in tables
    assert "| v4 | hco@28 | kron | channel_major | 2.5 |" in tables
