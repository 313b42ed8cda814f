"""Multiply-accumulate (MAC) counts read off the traced computation.

Method (the convention of fvcore, which the paper's table uses): trace the
forward pass to a jaxpr (no compilation, no data) and add up the MACs of every
``dot_general`` (Dense layers, DCT/IDCT einsums) and ``conv_general_dilated``
(convolutions), recursing into nested jaxprs; plus fvcore's rule for affine
LayerNorms, 5 per input element. Activations, the elementwise decay product and
pooling are not counted. vHeat-T / S / B at 224 in inference form come to
4.60 / 8.49 / 14.94 GMACs, printed as 4.6G / 8.5G / 14.9G in the paper.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
from flax import linen as nn
from jax.extend import core as jax_core

from vheat_jax import ops

LAYER_NORM_MACS_PER_ELEMENT = 5  # fvcore's norm_flop_counter with an affine transform


def _dot_general_macs(eqn) -> int:
    lhs, rhs = (v.aval.shape for v in eqn.invars)
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
    contract = math.prod(lhs[d] for d in lhs_contract)
    batch = math.prod(lhs[d] for d in lhs_batch)
    lhs_free = math.prod(s for d, s in enumerate(lhs) if d not in (*lhs_contract, *lhs_batch))
    rhs_free = math.prod(s for d, s in enumerate(rhs) if d not in (*rhs_contract, *rhs_batch))
    return batch * lhs_free * rhs_free * contract


def _conv_macs(eqn) -> int:
    out = eqn.outvars[0].aval.shape
    kernel = eqn.invars[1].aval.shape
    spec = eqn.params["dimension_numbers"].rhs_spec  # (out_feature_dim, in_feature_dim, *spatial)
    per_output = kernel[spec[1]] * math.prod(kernel[d] for d in spec[2:])
    return math.prod(out) * per_output


def _subjaxprs(eqn):
    for value in eqn.params.values():
        values = value if isinstance(value, (tuple, list)) else (value,)
        for item in values:
            if isinstance(item, jax_core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax_core.Jaxpr):
                yield item


def jaxpr_macs(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            total += _dot_general_macs(eqn)
        elif eqn.primitive.name == "conv_general_dilated":
            total += _conv_macs(eqn)
        for sub in _subjaxprs(eqn):
            total += jaxpr_macs(sub)
    return total


def count_macs(fn: Callable, *args) -> int:
    """MACs of ``fn(*args)``; ``args`` may be ``jax.ShapeDtypeStruct`` trees."""
    return jaxpr_macs(jax.make_jaxpr(fn)(*args).jaxpr)


def model_macs(module, params, batch: int = 1, img_hw: tuple[int, int] = (224, 224)) -> int:
    """MACs of one forward pass of a vHeat module at ``img_hw`` (params may be shape structs)."""
    norm_elements = []

    def count_norms(next_fun, args, kwargs, context):
        if isinstance(context.module, (nn.LayerNorm, ops.LayerNorm)) and context.method_name == "__call__":
            norm_elements.append(math.prod(args[0].shape))
        return next_fun(*args, **kwargs)

    if getattr(module, "scan_blocks", False):  # the norms are counted per call: each block called once
        module = module.clone(scan_blocks=False)

    def forward(p, x):
        with nn.intercept_methods(count_norms):
            return module.apply({"params": p}, x)

    images = jax.ShapeDtypeStruct((batch, *img_hw, 3), jax.numpy.float32)
    matmul_macs = count_macs(forward, params, images)
    return matmul_macs + LAYER_NORM_MACS_PER_ELEMENT * sum(norm_elements)
