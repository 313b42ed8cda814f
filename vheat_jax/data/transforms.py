"""Per-example image transforms (numpy + PIL), following timm's
``create_transform`` for the Swin/vHeat ImageNet recipe.

Training (``TrainTransform``):
  decode -> RandomResizedCrop(S, scale=(0.08, 1), ratio=(3/4, 4/3), bicubic)
  -> horizontal flip (p=0.5) -> RandAugment ``rand-m9-mstd0.5-inc1`` *or*
  ColorJitter(0.4) (timm ignores ``color_jitter`` when ``auto_augment`` is set)
  -> ToTensor + Normalize(ImageNet mean/std) -> RandomErasing(p=0.25, 'pixel').
Evaluation (``EvalTransform``):
  decode -> resize short side to int(S / crop_pct) (bicubic) -> center crop S
  -> normalize.

Images that cannot be decoded never raise: the example comes out as zeros with
``valid=0`` (train) / ``mask=0`` (eval) and a warning naming the file is logged.
Output images are float32 HWC.
"""

from __future__ import annotations

import io
import logging
import math
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from vheat_jax.data import randaugment

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN = np.asarray(IMAGENET_MEAN, np.float32)
_STD = np.asarray(IMAGENET_STD, np.float32)
BICUBIC = Image.BICUBIC


# ---------------------------------------------------------------------------
# Decoding.
# ---------------------------------------------------------------------------


def decode_image(data: Any) -> Image.Image:
    """Encoded bytes (or an HWC uint8 array) -> RGB PIL image. May raise."""
    if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim in (2, 3):
        if data.ndim == 3 and data.shape[-1] == 1:
            data = data[..., 0]
        return Image.fromarray(data).convert("RGB")
    if isinstance(data, np.ndarray):  # object/bytes scalar array
        data = data.item()
    img = Image.open(io.BytesIO(bytes(data)))
    img.load()  # force the full decode here so truncated files raise now
    return img.convert("RGB")  # as torchvision's pil_loader


def try_decode(data: Any, name: str) -> Image.Image | None:
    """``decode_image`` that logs a warning naming the file and returns None."""
    try:
        return decode_image(data)
    except Exception as e:  # noqa: BLE001 - any decoder failure = corrupt image
        logger.warning("Skipping corrupt/undecodable image %s: %s: %s", name, type(e).__name__, e)
        return None


# ---------------------------------------------------------------------------
# Geometric transforms.
# ---------------------------------------------------------------------------


def rrc_params(
    width: int, height: int, rng: np.random.Generator, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)
):
    """timm/torchvision RandomResizedCrop.get_params -> (top, left, h, w)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = rng.uniform(*scale) * area
        aspect_ratio = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if w <= width and h <= height:
            i = int(rng.integers(0, height - h + 1))
            j = int(rng.integers(0, width - w + 1))
            return i, j, h, w
    # Fallback to central crop.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(
    img: Image.Image, size: int, rng: np.random.Generator, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)
):
    i, j, h, w = rrc_params(img.size[0], img.size[1], rng, scale, ratio)
    return img.crop((j, i, j + w, i + h)).resize((size, size), BICUBIC)


def resize_short_side(img: Image.Image, size: int) -> Image.Image:
    """torchvision ``Resize(int)`` for PIL: short side -> size (bicubic)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return img
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return img.resize((new_w, new_h), BICUBIC)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """torchvision ``CenterCrop`` (assumes the image is at least size x size)."""
    w, h = img.size
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def eval_resize_size(image_size: int, crop_pct: float) -> int:
    return int(image_size / crop_pct)


def color_jitter(img: Image.Image, strength: float, rng: np.random.Generator) -> Image.Image:
    """torchvision ColorJitter(b=s, c=s, s=s, hue=0): random order of factors."""
    fns = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
    for k in rng.permutation(3):
        factor = rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength)
        img = fns[int(k)](img).enhance(factor)
    return img


# ---------------------------------------------------------------------------
# Tensor-side ops.
# ---------------------------------------------------------------------------


def to_normalized_array(img: Image.Image) -> np.ndarray:
    """ToTensor + Normalize, HWC float32."""
    x = np.asarray(img, dtype=np.float32) * (1.0 / 255.0)
    return (x - _MEAN) / _STD


def random_erasing(
    x: np.ndarray,
    rng: np.random.Generator,
    probability: float = 0.25,
    mode: str = "pixel",
    min_area: float = 0.02,
    max_area: float = 1.0 / 3.0,
    min_aspect: float = 0.3,
    count: int = 1,
) -> bool:
    """timm ``RandomErasing`` on a normalized HWC array, in place.

    mode 'pixel': per-pixel N(0,1); 'rand': per-channel N(0,1); 'const': 0.
    Returns True when a region was erased.
    """
    if rng.random() > probability:
        return False
    img_h, img_w, chan = x.shape
    area = img_h * img_w
    log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))
    erased = False
    for _ in range(count):
        for _ in range(10):
            target_area = rng.uniform(min_area, max_area) * area / count
            aspect_ratio = math.exp(rng.uniform(*log_aspect))
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < img_w and h < img_h:
                top = int(rng.integers(0, img_h - h + 1))
                left = int(rng.integers(0, img_w - w + 1))
                if mode == "pixel":
                    patch = rng.standard_normal((h, w, chan), dtype=np.float32)
                elif mode == "rand":
                    patch = rng.standard_normal((1, 1, chan), dtype=np.float32)
                else:
                    patch = np.zeros((1, 1, chan), np.float32)
                x[top : top + h, left : left + w, :] = patch
                erased = True
                break
    return erased


# ---------------------------------------------------------------------------
# grain transforms.  Input examples: {"image": bytes|uint8 array,
# "label": int, "name": str}.
# ---------------------------------------------------------------------------


def _aug_get(aug, key, default):
    if aug is None:
        return default
    return aug.get(key, default) if hasattr(aug, "get") else getattr(aug, key, default)


class TrainTransform:
    """Decode + timm training augmentation: ``random_map(element, rng)``.

    Output: {"image": float32 (S, S, 3), "label": int32, "valid": float32}.
    """

    def __init__(self, image_size: int, aug=None):
        self.image_size = int(image_size)
        self.rrc = bool(_aug_get(aug, "random_resized_crop", True))
        self.hflip = bool(_aug_get(aug, "hflip", True))
        ra = _aug_get(aug, "randaug", "rand-m9-mstd0.5-inc1") or ""
        self.randaug = None
        if ra and ra.lower() != "none":
            # timm: translate_const = int(0.45 * S) (unused by the Rel ops),
            # img_mean = round(255 * mean) = (124, 116, 104), interpolation bicubic.
            hp = dict(
                translate_const=int(self.image_size * 0.45),
                img_mean=tuple(min(255, round(255 * m)) for m in IMAGENET_MEAN),
                interpolation=BICUBIC,
            )
            self.randaug = randaugment.rand_augment_transform(ra, hp)
        # timm create_transform: color_jitter is ignored when auto_augment is set.
        cj = float(_aug_get(aug, "color_jitter", 0.4) or 0.0)
        self.color_jitter = cj if (self.randaug is None and cj > 0) else 0.0
        self.reprob = float(_aug_get(aug, "reprob", 0.25) or 0.0)
        self.remode = str(_aug_get(aug, "remode", "pixel"))

    def augment(self, img: Image.Image, rng: np.random.Generator) -> np.ndarray:
        s = self.image_size
        if self.rrc:
            img = random_resized_crop(img, s, rng)
        elif img.size != (s, s):
            img = img.resize((s, s), BICUBIC)
        if self.hflip and rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if self.randaug is not None:
            img = self.randaug(img, rng)
        elif self.color_jitter > 0:
            img = color_jitter(img, self.color_jitter, rng)
        x = to_normalized_array(img)
        if self.reprob > 0:
            random_erasing(x, rng, probability=self.reprob, mode=self.remode)
        return x

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        img = try_decode(element["image"], element.get("name", "?"))
        label = np.int32(element["label"])
        if img is None:
            s = self.image_size
            return {"image": np.zeros((s, s, 3), np.float32), "label": label, "valid": np.float32(0.0)}
        return {"image": self.augment(img, rng), "label": label, "valid": np.float32(1.0)}

    __call__ = random_map


class EvalTransform:
    """Decode + resize/center-crop/normalize.  Use with ``MapDataset.map``.

    Padding elements (``None`` or ``{"pad": True}``) and undecodable images
    give zeros with mask 0.  Output: {"image": float32 (S, S, 3), "label": int32, "mask": f32}.
    """

    def __init__(self, image_size: int, crop_pct: float = 0.875):
        self.image_size = int(image_size)
        self.resize_size = eval_resize_size(self.image_size, crop_pct)

    def transform_image(self, img: Image.Image) -> np.ndarray:
        img = center_crop(resize_short_side(img, self.resize_size), self.image_size)
        return to_normalized_array(img)

    def map(self, element: dict | None) -> dict:
        s = self.image_size
        blank = {"image": np.zeros((s, s, 3), np.float32), "label": np.int32(0), "mask": np.float32(0.0)}
        if element is None or element.get("pad", False):
            return blank
        img = try_decode(element["image"], element.get("name", "?"))
        if img is None:
            blank["label"] = np.int32(element["label"])
            return blank
        return {
            "image": self.transform_image(img),
            "label": np.int32(element["label"]),
            "mask": np.float32(1.0),
        }

    __call__ = map
