"""Transformations of trained vHeat parameters: inference form and input-size adaptation."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
from flax import traverse_util

from vheat_jax.arch import Arch
from vheat_jax.heat import decay_from_k
from vheat_jax.model import stage_resolutions
from vheat_jax.resize import resize_bicubic_hw, zero_pad_freq_embed

ADAPT_METHODS = ("zero_pad", "bicubic")


def _require_training_form(arch: Arch, what: str) -> None:
    if arch.infer_mode:
        raise ValueError(f"{what} needs training-form weights (frequency embeddings and to_k); these are "
                         "inference-form (k_exp only). Convert the training-form checkpoint instead.")


def adapt_img_size(params: dict, arch: Arch, img_size: int, method: str = "zero_pad") -> tuple[Arch, dict]:
    """Moves the frequency embeddings to another input size.

    ``zero_pad`` is the official recipe (``interpolate4downstream.py``): zeros at the
    high-frequency end, growing only. ``bicubic`` resizes with PyTorch's bicubic,
    as the official dense backbone does on the fly.
    """
    _require_training_form(arch, "adapting the input size")
    if method not in ADAPT_METHODS:
        raise ValueError(f"unknown adaptation method {method!r}; choose one of {ADAPT_METHODS}")
    targets = stage_resolutions(img_size, arch.patch_size, len(arch.depths))
    params = dict(params)
    for i, res in enumerate(targets):
        embed = params[f"freq_embed_{i}"]
        if method == "zero_pad":
            params[f"freq_embed_{i}"] = zero_pad_freq_embed(embed, i, arch.img_size, img_size)
        else:
            params[f"freq_embed_{i}"] = resize_bicubic_hw(embed, (res, res))
    return arch.replace(img_size=img_size), params


@jax.jit
def _k_exp(freq_embed, to_k):
    k = jax.nn.relu(jnp.dot(freq_embed, to_k["kernel"], precision=jax.lax.Precision.HIGHEST) + to_k["bias"])
    return decay_from_k(k)


def to_inference_form(params: dict, arch: Arch, img_size: int | None = None) -> tuple[Arch, dict]:
    """Folds each block's decay ``exp(-w) ** relu(to_k(freq_embed))`` into one constant ``k_exp``.

    This is the official ``infer_init``: ``to_k`` and the frequency embeddings are
    dropped. The result is tied to one input size (``img_size``, default the
    trained one; embeddings are resized bicubically first, as the dense backbone
    would at run time). Build the module with ``arch.build()`` of the returned arch.
    """
    _require_training_form(arch, "building the inference form")
    if (img_size or arch.img_size) % (arch.patch_size * 2 ** (len(arch.depths) - 1)):
        raise ValueError(f"the inference form needs an input size divisible by "
                         f"{arch.patch_size * 2 ** (len(arch.depths) - 1)} (got {img_size or arch.img_size}): "
                         "otherwise the stages' feature sizes round differently from the decay tables")
    if img_size is not None and img_size != arch.img_size:
        arch, params = adapt_img_size(params, arch, img_size, method="bicubic")
    flat = traverse_util.flatten_dict(params)
    out = {}
    for path, value in flat.items():
        if path[0].startswith("freq_embed_") or "to_k" in path:
            continue
        out[path] = value
    for path in flat:
        if path[-2:] == ("to_k", "kernel"):
            stage = int(re.fullmatch(r"layers_(\d+)", path[0])[1])
            to_k = {"kernel": flat[path], "bias": flat[path[:-1] + ("bias",)]}
            out[path[:-2] + ("k_exp",)] = _k_exp(params[f"freq_embed_{stage}"], to_k)
    return arch.replace(infer_mode=True), traverse_util.unflatten_dict(out)
