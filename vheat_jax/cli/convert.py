"""``convert_torch.py``: official PyTorch vHeat checkpoints <-> JAX, and input-size adaptation."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import jax
import numpy as np

from vheat_jax.convert import export_torch, load_any, save_msgpack, save_orbax
from vheat_jax.forms import ADAPT_METHODS, adapt_img_size, to_inference_form
from vheat_jax.torch_io import CheckpointError

EPILOG = """\
The output format follows OUTPUT: a name ending in .pth is a PyTorch file that the
official code loads with load_state_dict(strict=True) (classification weights under
"model", backbones under "state_dict" with the "backbone." prefix); .msgpack is one
self-describing Flax file; anything else is an Orbax checkpoint directory. The input
may be any of the three. PyTorch is not needed and nothing in a .pth is executed.

examples:
  python convert_torch.py vHeat_tiny.pth vheat_tiny_orbax            # for eval.py / train.py
  python convert_torch.py vHeat_tiny.pth tiny_ema.msgpack --ema       # EMA weights, one file
  python convert_torch.py vHeat_tiny.pth tiny_512.pth --img-size 512  # official zero-pad recipe
  python convert_torch.py vheat_tiny_orbax back.pth                   # export to PyTorch
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="convert_torch.py", description=__doc__, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="official .pth (classification or mmdet/mmseg), Orbax dir or .msgpack")
    parser.add_argument("output", help="output .pth, .msgpack, or Orbax directory")
    parser.add_argument("--ema", action="store_true", help="take 'model_ema' instead of 'model'")
    parser.add_argument("--post-norm", choices=("auto", "true", "false"), default="auto",
                        help="pre- or post-norm blocks when the checkpoint has no config (default: "
                             "from the config; without one, post-norm iff layer scale, as the official variants)")
    parser.add_argument("--img-size", type=int, help="adapt the frequency embeddings to this input size")
    parser.add_argument("--adapt-method", choices=ADAPT_METHODS, default="zero_pad",
                        help="zero_pad: official interpolate4downstream.py recipe (grow only); "
                             "bicubic: PyTorch-identical bicubic resize (default: %(default)s)")
    parser.add_argument("--inference-form", action="store_true",
                        help="fold each block's decay into a constant k_exp (official infer_mode)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    post_norm = {"auto": None, "true": True, "false": False}[args.post_norm]
    try:
        arch, params = load_any(args.input, ema=args.ema, post_norm=post_norm)
        if args.img_size and args.img_size != arch.img_size:
            arch, params = adapt_img_size(params, arch, args.img_size, args.adapt_method)
        if args.inference_form:
            arch, params = to_inference_form(params, arch)
        output = Path(args.output)
        if output.suffix == ".pth":
            export_torch(params, arch, output)
        elif output.suffix == ".msgpack":
            save_msgpack(params, arch, output)
        else:
            save_orbax(params, arch, output)
    except (CheckpointError, ValueError, FileNotFoundError) as err:
        print(f"convert_torch.py: error: {err}", file=sys.stderr)
        return 2
    count = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))
    print(f"wrote {output}: {arch} ({count:,} parameters)")
    return 0
