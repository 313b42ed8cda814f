"""``convert_torch.py INPUT OUTPUT``: official PyTorch vHeat checkpoints <-> JAX, and input-size adaptation.

The output format follows OUTPUT: a name ending in .pth is a PyTorch file that the
official code loads with load_state_dict(strict=True) (classification weights under
"model", backbones under "state_dict" with the "backbone." prefix); .safetensors holds
the same official state dict without any pickle (the architecture in its metadata), as
JAX model zoos trade weights; .msgpack is one self-describing Flax file; anything else is
an Orbax checkpoint directory. The input may be any of the four. PyTorch is not needed
and nothing in a .pth is executed.

examples:
  python convert_torch.py vHeat_tiny.pth vheat_tiny_orbax            # for eval.py / train.py
  python convert_torch.py vHeat_tiny.pth tiny_ema.msgpack --ema       # EMA weights, one file
  python convert_torch.py vHeat_tiny.pth tiny_512.pth --img-size 512  # official zero-pad recipe
  python convert_torch.py vheat_tiny_orbax back.pth                   # export to PyTorch
  python convert_torch.py vHeat_tiny.pth vheat_tiny.safetensors        # no pickle: for model zoos

Flags may be spelled with '-' or '_' (--img-size, --img_size).
"""

from __future__ import annotations

import logging

from absl import flags

from vheat_jax.cli import common
from vheat_jax.forms import ADAPT_METHODS
from vheat_jax.paths import as_path, check_output, check_supported

flags.DEFINE_bool("ema", False, "Take 'model_ema' instead of 'model'.")
flags.DEFINE_enum("post_norm", "auto", ["auto", "true", "false"],
                  "Pre- or post-norm blocks when the checkpoint has no config (auto: from its config; without "
                  "one, post-norm iff layer scale, as the official variants).")
flags.DEFINE_integer("img_size", None, "Adapt the frequency embeddings to this input size.")
flags.DEFINE_enum("adapt_method", "zero_pad", list(ADAPT_METHODS),
                  "zero_pad: official interpolate4downstream.py recipe (grow only); bicubic: PyTorch-identical resize.")
flags.DEFINE_bool("inference_form", False, "Fold each block's decay into a constant k_exp (official infer_mode).")
for _name in ("post_norm", "img_size", "adapt_method", "inference_form"):
    flags.DEFINE_alias(_name.replace("_", "-"), _name)


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        common.fail("expected two arguments, INPUT OUTPUT (see --help)")
    import jax
    import numpy as np

    from vheat_jax.convert import export_torch, load_any, save_msgpack, save_orbax, save_safetensors
    from vheat_jax.forms import adapt_img_size, to_inference_form

    FLAGS = flags.FLAGS
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    source, output = argv[1], as_path(argv[2])
    for what, path in (("INPUT", source), ("OUTPUT", argv[2])):
        check_supported(path, what)
    check_output(output, "OUTPUT")  # before the conversion's work, not after it
    post_norm = {"auto": None, "true": True, "false": False}[FLAGS.post_norm]
    try:
        arch, params = load_any(source, ema=FLAGS.ema, post_norm=post_norm)
        if FLAGS.img_size and FLAGS.img_size != arch.img_size:
            arch, params = adapt_img_size(params, arch, FLAGS.img_size, FLAGS.adapt_method)
        if FLAGS.inference_form:
            arch, params = to_inference_form(params, arch)
        if output.suffix == ".pth":
            export_torch(params, arch, output)
        elif output.suffix == ".safetensors":
            save_safetensors(params, arch, output)
        elif output.suffix == ".msgpack":
            save_msgpack(params, arch, output)
        else:
            save_orbax(params, arch, output)
    except ValueError as err:  # shape and architecture mismatches of the conversion itself
        common.fail(str(err))
    count = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))
    print(f"wrote {output}: {arch} ({count:,} parameters)")


def run() -> None:
    common.run(main, doc=__doc__, module_name=__name__)
