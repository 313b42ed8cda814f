"""vheat-jax: vHeat ("Building Vision Models upon Heat Conduction") in JAX/Flax.

Public API (see README):

* ``create_model(name, **overrides)`` - ``vheat_tiny`` / ``vheat_small`` / ``vheat_base``.
* ``load_torch_checkpoint(path, *, ema=False, post_norm=None) -> (model, variables)``.
* ``to_inference_form`` / ``adapt_img_size`` - transforms of trained parameters.
* ``to_nnx`` / ``load_nnx`` - the same model as a Flax NNX module (``flax.nnx.bridge``).
* ``export_torch``, ``save_safetensors``, ``save_orbax``, ``save_msgpack``, ``load_any`` - checkpoint files.
"""

from vheat_jax.arch import Arch, ArchitectureMismatchError
from vheat_jax.convert import (
    export_torch,
    load_any,
    load_torch_checkpoint,
    params_from_safetensors,
    params_from_torch,
    save_msgpack,
    save_orbax,
    save_safetensors,
)
from vheat_jax.forms import adapt_img_size, to_inference_form
from vheat_jax.model import VHeat, VHeatBackbone
from vheat_jax.nnx_bridge import load_nnx, to_nnx
from vheat_jax.torch_io import CheckpointError, UnsafeCheckpointError
from vheat_jax.variants import VARIANTS, create_model

__all__ = [
    "Arch", "ArchitectureMismatchError", "CheckpointError", "UnsafeCheckpointError", "VARIANTS",
    "VHeat", "VHeatBackbone", "adapt_img_size", "create_model", "export_torch", "load_any",
    "load_torch_checkpoint", "params_from_safetensors", "params_from_torch", "save_msgpack", "save_orbax",
    "save_safetensors", "to_inference_form", "to_nnx", "load_nnx",
]
