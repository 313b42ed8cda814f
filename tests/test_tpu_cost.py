"""bench/tpu_cost.py's reading of optimized TPU HLO (the compile itself needs libtpu, so it is run by hand).

The HLO below has the shape of libtpu's output: operands named without shapes, tiled layouts,
VMEM buffers marked S(1), fusion bodies as separate computations.
"""

import sys

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
    assert set(parts) == {"HCO (DCT, decay, IDCT)", "LayerNorm", "optimizer, EMA, loss, augmentation"}


def test_category_names_the_part_of_the_model():
    assert tpu_cost.category("jit(train_step)/transpose(jvp(VHeat))/layers_1/blocks_0/op/dwconv/mul") == "depthwise conv"
    assert tpu_cost.category("jit(train_step)/jvp(VHeat)/layers_2/blocks_3/mlp/fc1/dot_general") == "MLP"
    assert tpu_cost.category("jit(train_step)/jvp(VHeat)/layers_0/blocks_0/op/to_k/dot_general") == "decay (to_k, pow)"
    assert tpu_cost.category("jit(train_step)/jvp(VHeat)/layers_0/blocks_0/op/dot_general") == "HCO (DCT, decay, IDCT)"
    assert tpu_cost.category("jit(train_step)/adam/mul") == "optimizer, EMA, loss, augmentation"
