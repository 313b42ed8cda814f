"""vHeat in Flax (linen), NHWC, numerically equal to the official PyTorch model.

Two top-level modules share one encoder (stem, per-stage frequency embeddings,
four stages of Heat blocks with downsampling between them):

* :class:`VHeat` - classification: ``apply(variables, images) -> logits``.
  Stage outputs (before each stage's downsampling) are sown into the
  ``"intermediates"`` collection as ``stage0`` .. ``stage3``.
* :class:`VHeatBackbone` - dense prediction (detection / segmentation):
  ``apply(variables, images) -> [stage0, .., stage3]``, each through its own
  LayerNorm ``outnorm_{i}``, as the official mmdet/mmseg backbone.

When the feature size of a stage differs from its trained frequency embedding
(any input size other than ``img_size``), the embedding is resized with
PyTorch-identical bicubic interpolation, which is what the official dense
backbone does. The official classifier cannot run at another size at all; ours
follows the dense rule there too.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from vheat_jax import ops
from vheat_jax.heat import HeatConduction, LayerNorm, stage_forms
from vheat_jax.resize import resize_bicubic_hw

# torch.nn.GELU is the exact erf form (flax's default is the tanh approximation).
gelu = ops.gelu


def stage_resolutions(img_size: int, patch_size: int = 4, num_stages: int = 4) -> list[int]:
    """Trained frequency-embedding size per stage, as the official ``self.res``."""
    res0 = img_size / patch_size
    return [int(res0 // 2**i) for i in range(num_stages)]


def stage_widths(dims: int, num_stages: int = 4) -> list[int]:
    return [dims * 2**i for i in range(num_stages)]


def drop_path_rates(drop_path_rate: float, depths: Sequence[int]) -> list[float]:
    """Stochastic depth grows linearly from 0 to ``drop_path_rate`` over all blocks."""
    return [float(r) for r in np.linspace(0.0, drop_path_rate, sum(depths), dtype=np.float32)]


def conv3x3(features: int, *, stride: int = 1, use_bias: bool = True, dtype=jnp.float32, name: str):
    # Explicit symmetric padding: torch's padding=1 is not flax's 'SAME' for stride 2.
    return nn.Conv(features, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)),
                   use_bias=use_bias, dtype=dtype, name=name)


class DropPath(nn.Module):
    """timm's DropPath: drop whole residual branches per sample, rescale by 1/keep."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool, rate: jax.Array | None = None) -> jax.Array:
        """``rate``, when given, replaces the field: a traced value (the blocks of a scanned stage differ)."""
        if deterministic or (rate is None and self.rate == 0.0):
            return x
        keep = 1.0 - (self.rate if rate is None else rate)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        return x * mask.astype(x.dtype) / jnp.asarray(keep, x.dtype)


class Mlp(nn.Module):
    hidden: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = gelu(nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x))
        return nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(y)


class HeatBlock(nn.Module):
    """Residual Heat block: HCO branch then MLP branch, pre-norm or post-norm."""

    dim: int
    res: int
    drop_path: float = 0.0
    post_norm: bool = False
    layer_scale: float | None = None
    mlp_ratio: float = 4.0
    infer_mode: bool = False
    hco_form: str = "auto"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, freq_embed: jax.Array | None, train: bool,
                 drop_rate: jax.Array | None = None) -> jax.Array:
        op = HeatConduction(self.dim, self.res, self.infer_mode, self.hco_form, self.dtype, name="op")
        mlp = Mlp(int(self.dim * self.mlp_ratio), self.dtype, name="mlp")
        norm1 = LayerNorm(dtype=self.dtype, name="norm1")
        norm2 = LayerNorm(dtype=self.dtype, name="norm2")
        drop = DropPath(self.drop_path, name="drop_path")

        if self.post_norm:
            branch1 = lambda h: norm1(op(h, freq_embed))  # noqa: E731
            branch2 = lambda h: norm2(mlp(h))  # noqa: E731
        else:
            branch1 = lambda h: op(norm1(h), freq_embed)  # noqa: E731
            branch2 = lambda h: mlp(norm2(h))  # noqa: E731

        for index, branch in ((1, branch1), (2, branch2)):
            y = branch(x)
            if self.layer_scale is not None:
                gamma = self.param(f"gamma{index}", nn.initializers.constant(self.layer_scale), (self.dim,))
                y = gamma * y
            x = x + drop(y, deterministic=not train, rate=drop_rate)
        return x


class HeatStage(nn.Module):
    """One stage: ``depth`` Heat blocks sharing ``freq_embed``, then optional downsampling.

    Returns ``(stage_output, next_stage_input)``. With ``scan_blocks`` (after initialisation) the
    blocks run as one ``lax.scan`` over their parameters stacked in the step: XLA compiles one
    block per stage instead of ``depth``, while the parameter tree keeps one ``blocks_{j}`` per
    block, so checkpoints, the converter and the key maps see the same tree either way.
    """

    dim: int
    depth: int
    res: int
    drop_paths: Sequence[float]
    downsample: bool
    post_norm: bool = False
    layer_scale: float | None = None
    mlp_ratio: float = 4.0
    infer_mode: bool = False
    remat: bool = False
    scan_blocks: bool = False
    hco_form: str = "auto"
    dtype: jnp.dtype = jnp.float32

    def _block_fields(self) -> dict:
        return dict(dim=self.dim, res=self.res, post_norm=self.post_norm, layer_scale=self.layer_scale,
                    mlp_ratio=self.mlp_ratio, infer_mode=self.infer_mode, hco_form=self.hco_form, dtype=self.dtype)

    @nn.compact
    def __call__(self, x, freq_embed, train: bool):
        if self.scan_blocks and self.depth > 1 and not self.is_initializing():
            x = self._scanned_blocks(x, freq_embed, train)
        else:
            # static_argnums counts `self`: argument 3 is `train`.
            block_cls = nn.remat(HeatBlock, static_argnums=(3,)) if self.remat else HeatBlock
            for j in range(self.depth):
                x = block_cls(drop_path=self.drop_paths[j], **self._block_fields(), name=f"blocks_{j}")(
                    x, freq_embed, train)
        if not self.downsample:
            return x, x
        y = conv3x3(2 * self.dim, stride=2, use_bias=False, dtype=self.dtype, name="downsample_conv")(x)
        return x, LayerNorm(dtype=self.dtype, name="downsample_norm")(y)

    def _scanned_blocks(self, x: jax.Array, freq_embed: jax.Array | None, train: bool) -> jax.Array:
        """The blocks as one scan: the j-th step applies ``blocks_{j}``'s parameters with its drop-path rate
        and its own ``dropout`` key."""
        params = self.variables["params"]
        stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *(params[f"blocks_{j}"] for j in range(self.depth)))
        keys = rates = None  # no drop path: the blocks' own rate (0) skips it
        if train and any(self.drop_paths):
            keys = jax.random.split(self.make_rng("dropout"), self.depth)
            rates = jnp.asarray(self.drop_paths, jnp.float32)
        block = HeatBlock(**self._block_fields(), parent=None)

        def step(h, per_block):
            block_params, rate, key = per_block
            rngs = None if key is None else {"dropout": key}
            return block.apply({"params": block_params}, h, freq_embed, train, rate, rngs=rngs), None

        if self.remat:
            step = jax.checkpoint(step)
        # The carry keeps one dtype: a block with layer scale returns float32 (its gammas) from a bfloat16 input.
        carry = jax.eval_shape(step, x, jax.tree.map(lambda a: a[0], (stacked, rates, keys)))[0]
        x, _ = jax.lax.scan(step, x.astype(carry.dtype), (stacked, rates, keys))
        return x


class _VHeatEncoder(nn.Module):
    """Fields and the stem-plus-stages computation shared by both heads."""

    dims: int = 96
    depths: Sequence[int] = (2, 2, 6, 2)
    post_norm: bool = False
    layer_scale: float | None = None
    drop_path_rate: float = 0.1
    img_size: int = 224
    patch_size: int = 4
    mlp_ratio: float = 4.0
    infer_mode: bool = False
    remat: bool = False
    scan_blocks: bool = False  # each stage's blocks as one lax.scan: compiled once per stage, same parameters
    hco_form: str = "auto"  # vheat_jax.heat.HCO_FORMS, or one per stage comma-separated; all give the same outputs
    dtype: jnp.dtype = jnp.float32

    def _stage_outputs(self, images: jax.Array, train: bool) -> list[jax.Array]:
        """Runs stem and stages; must be called from a compact ``__call__``."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected NHWC images with 3 channels, got shape {images.shape}")
        x = images.astype(self.dtype)
        widths = stage_widths(self.dims, len(self.depths))
        stem_norm = functools.partial(ops.LayerNorm, epsilon=1e-6, dtype=self.dtype)
        x = conv3x3(widths[0] // 2, stride=2, dtype=self.dtype, name="patch_embed_conv1")(x)
        x = gelu(stem_norm(name="patch_embed_norm1")(x))
        x = conv3x3(widths[0], stride=2, dtype=self.dtype, name="patch_embed_conv2")(x)
        x = stem_norm(name="patch_embed_norm2")(x)

        resolutions = stage_resolutions(self.img_size, self.patch_size, len(self.depths))
        rates = drop_path_rates(self.drop_path_rate, self.depths)
        forms = stage_forms(self.hco_form, len(self.depths))
        outputs = []
        for i, (dim, depth, res) in enumerate(zip(widths, self.depths, resolutions)):
            freq_embed = None
            if not self.infer_mode:
                freq_embed = self.param(f"freq_embed_{i}", nn.initializers.truncated_normal(0.02), (res, res, dim))
                if freq_embed.shape[:2] != x.shape[1:3]:
                    freq_embed = resize_bicubic_hw(freq_embed, x.shape[1:3])
            first = sum(self.depths[:i])
            stage_out, x = HeatStage(
                dim=dim, depth=depth, res=res, drop_paths=tuple(rates[first:first + depth]),
                downsample=i < len(self.depths) - 1, post_norm=self.post_norm, layer_scale=self.layer_scale,
                mlp_ratio=self.mlp_ratio, infer_mode=self.infer_mode, remat=self.remat,
                scan_blocks=self.scan_blocks, hco_form=forms[i], dtype=self.dtype, name=f"layers_{i}",
            )(x, freq_embed, train)
            outputs.append(stage_out)
        return outputs


class VHeat(_VHeatEncoder):
    """vHeat image classifier: NHWC images -> logits (float32)."""

    num_classes: int = 1000

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        outputs = self._stage_outputs(images, train)
        for i, out in enumerate(outputs):
            self.sow("intermediates", f"stage{i}", out)
        x = LayerNorm(dtype=self.dtype, name="classifier_norm")(outputs[-1])
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)


class VHeatBackbone(_VHeatEncoder):
    """vHeat for dense prediction: NHWC images -> four NHWC stage features (after out-norms)."""

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> list[jax.Array]:
        outputs = self._stage_outputs(images, train)
        return [LayerNorm(dtype=self.dtype, name=f"outnorm_{i}")(out) for i, out in enumerate(outputs)]
