"""The last steps of the training recipe, under ``jit`` on the accelerator.

The host ships uint8 images (4x fewer bytes than float32, and no per-pixel
float work on the host CPUs) with the random parameters it drew for them;
here they are normalised, randomly erased and mixed, in the order of timm's
recipe (``ToTensor + Normalize -> RandomErasing`` per example, then
``Mixup`` per batch).  Only the erased pixels' noise is drawn here (by
``jax.random``, keyed per example by a seed the host drew from the
example's own generator, so it does not depend on the number of processes).

Batch fields (per row; :func:`train_batch_spec` gives shapes and dtypes):
  image uint8 (S, S, 3); label float32 (K,) soft targets; valid float32;
  erase_box int32 (top, left, height, width), height 0 = not erased, and
  erase_seed uint32, when random erasing is on;
  mix_weight float32 and mix_box int32 (yl, yh, xl, xh), when mixup/cutmix is
  on.  Mixing partners are adjacent rows (2i, 2i + 1): the host interleaves
  each batch so that timm's partner (row B-1-i) sits next to its row, which
  keeps the exchange inside one device's shard.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vheat_jax.cls.transforms import ERASE_MODES, IMAGENET_MEAN, IMAGENET_STD


def normalize(images: jax.Array) -> jax.Array:
    """uint8 NHWC -> ToTensor + Normalize (ImageNet mean/std), float32."""
    x = images.astype(jnp.float32) * (1.0 / 255.0)
    return (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)


def box_mask(boxes: jax.Array, height: int, width: int) -> jax.Array:
    """(B, 4) boxes (y0, y1, x0, x1), half-open -> (B, H, W, 1) bool."""
    rows = jnp.arange(height)[None, :, None]
    cols = jnp.arange(width)[None, None, :]
    y0, y1, x0, x1 = (boxes[:, k, None, None] for k in range(4))
    return ((rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1))[..., None]


def random_erase(images: jax.Array, erase_box: jax.Array, erase_seed: jax.Array, mode: str) -> jax.Array:
    """timm ``RandomErasing`` (one box) on normalised images: the box gets N(0, 1) noise
    per pixel ('pixel'), per channel ('rand') or zeros ('const')."""
    if mode not in ERASE_MODES:
        raise ValueError(f"aug.remode={mode!r} is not one of {ERASE_MODES}")
    _, height, width, channels = images.shape
    top, left, h, w = (erase_box[:, k] for k in range(4))
    inside = box_mask(jnp.stack([top, top + h, left, left + w], axis=1), height, width)
    if mode == "const":
        return jnp.where(inside, 0.0, images)
    shape = (height, width, channels) if mode == "pixel" else (1, 1, channels)
    base = jax.random.key(0)
    noise = jax.vmap(lambda s: jax.random.normal(jax.random.fold_in(base, s), shape, images.dtype))(erase_seed)
    return jnp.where(inside, noise, images)


def partners(x: jax.Array) -> jax.Array:
    """Swaps rows 2i and 2i + 1 (the host placed each row's mixing partner next to it)."""
    pairs = x.reshape(x.shape[0] // 2, 2, *x.shape[1:])
    return pairs[:, ::-1].reshape(x.shape)


def mix(images: jax.Array, mix_weight: jax.Array, mix_box: jax.Array) -> jax.Array:
    """Mixup / cutmix with the host's draw: the partner inside ``mix_box``, a blend outside."""
    other = partners(images)
    weight = mix_weight[:, None, None, None]
    blended = images * weight + other * (1.0 - weight)
    return jnp.where(box_mask(mix_box, images.shape[1], images.shape[2]), other, blended)


def train_images(batch: dict[str, jax.Array], erase_mode: str = "pixel") -> jax.Array:
    """The model's float32 input from a training batch (uint8 images and their random parameters)."""
    images = batch["image"]
    if images.dtype != jnp.uint8:
        raise TypeError(f"training batches carry uint8 images, got {images.dtype}")
    x = normalize(images)
    if "erase_box" in batch:
        x = random_erase(x, batch["erase_box"], batch["erase_seed"], erase_mode)
    if "mix_weight" in batch:
        x = mix(x, batch["mix_weight"], batch["mix_box"])
    return x


def train_batch_spec(batch_size: int, image_size: int, num_classes: int, *, erase: bool,
                     mix: bool) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Field -> (shape, dtype) of a training batch, as the loader yields it."""
    spec = {
        "image": ((batch_size, image_size, image_size, 3), np.dtype(np.uint8)),
        "label": ((batch_size, num_classes), np.dtype(np.float32)),
        "valid": ((batch_size,), np.dtype(np.float32)),
    }
    if erase:
        spec["erase_box"] = ((batch_size, 4), np.dtype(np.int32))
        spec["erase_seed"] = ((batch_size,), np.dtype(np.uint32))
    if mix:
        spec["mix_weight"] = ((batch_size,), np.dtype(np.float32))
        spec["mix_box"] = ((batch_size, 4), np.dtype(np.int32))
    return spec
