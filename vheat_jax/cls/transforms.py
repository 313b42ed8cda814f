"""Per-example image transforms (numpy + PIL), following timm's
``create_transform`` for the Swin/vHeat ImageNet recipe.

Training (``TrainTransform``, host side, uint8 throughout):
  decode -> RandomResizedCrop(S, scale=(0.08, 1), ratio=(3/4, 4/3), bicubic)
  -> horizontal flip (p=0.5) -> RandAugment ``rand-m9-mstd0.5-inc1`` *or*
  ColorJitter(0.4) (timm ignores ``color_jitter`` when ``auto_augment`` is set)
  -> the RandomErasing(p=0.25, 'pixel') box.  ToTensor + Normalize, the erasing
  itself and mixup happen on the device (:mod:`vheat_jax.cls.on_device`).
  With ``aug.scaled_decode`` (default on) a JPEG's crop box is drawn on the
  full-size image first, then the decoder scales by 1/2, 1/4 or 1/8 in the DCT
  domain, the smallest at which the crop is still at least S x S (libjpeg-turbo
  through ``simplejpeg``), and the crop is resized from there: less decoding,
  a slightly different resampling (PSNR in docs/input_pipeline.md).  Crops
  too small for half size are decoded at full size, exactly as before.
Evaluation (``EvalTransform``):
  decode -> resize short side to int(S / crop_pct) (bicubic) -> center crop S
  -> normalize.

Images that cannot be decoded never raise: the example comes out as zeros with
``valid=0`` (train) / ``mask=0`` (eval) and a warning naming the file is logged.
Train images are uint8 HWC, eval images float32 HWC (normalised).
"""

from __future__ import annotations

import io
import logging
import math
from typing import Any

import numpy as np
import simplejpeg
from PIL import Image, ImageEnhance

from vheat_jax.cls import randaugment
from vheat_jax.errors import ConfigError

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ERASE_MODES = ("pixel", "rand", "const")  # timm RandomErasing: per-pixel noise, per-channel noise, zeros
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
    return img if img.mode == "RGB" else img.convert("RGB")  # as torchvision's pil_loader (no copy when RGB)


_NAMED_UNDECODABLE = 5  # per process; the trainer counts the rest and reports them once per epoch
_undecodable_seen = 0


def warn_undecodable(name: str, err: Exception) -> None:
    """Names the first few undecodable images of this process; after that they are only counted."""
    global _undecodable_seen
    _undecodable_seen += 1
    if _undecodable_seen <= _NAMED_UNDECODABLE:
        more = " (further ones are counted, not named)" if _undecodable_seen == _NAMED_UNDECODABLE else ""
        logger.warning("Skipping corrupt/undecodable image %s: %s: %s%s", name, type(err).__name__, err, more)


def try_decode(data: Any, name: str) -> Image.Image | None:
    """``decode_image`` that warns (:func:`warn_undecodable`) and returns None."""
    try:
        return decode_image(data)
    except Exception as e:  # noqa: BLE001 - any decoder failure = corrupt image
        warn_undecodable(name, e)
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


def is_jpeg(data: Any) -> bool:
    return isinstance(data, (bytes, bytearray, memoryview)) and bytes(data[:3]) == b"\xff\xd8\xff"


def scaled_decode_crop(data: bytes, size: int, rng: np.random.Generator) -> Image.Image:
    """``random_resized_crop(decode_image(data), size, rng)`` for a JPEG, decoding only as
    many pixels as the crop needs: the box is drawn on the full-size image (same draws),
    the decoder scales by the smallest of 1/8, 1/4, 1/2 that keeps the box at least
    ``size`` on both sides (else decodes at full size), and the box is resized from the
    scaled image.  May raise."""
    height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    i, j, h, w = rrc_params(width, height, rng)
    # Only the power-of-two scales: libjpeg-turbo has SIMD inverse DCTs for those alone, and
    # its 5/8 .. 7/8 scales decode slower than full size (7/8: twice the time), 3/8 slower
    # than 1/2, and they lose the most PSNR (bench/jpeg_scales.py, docs/input_pipeline.md).
    scale = next((f for f in (0.125, 0.25, 0.5) if f * min(h, w) >= size), 1.0)
    pixels = None
    if colorspace not in ("CMYK", "YCCK"):  # PIL's RGB of those (Adobe's inverted CMYK) is the reference
        try:
            pixels = simplejpeg.decode_jpeg(data, "RGB", min_height=math.ceil(height * scale),
                                            min_width=math.ceil(width * scale))
        except ValueError:  # whatever libjpeg-turbo refuses, PIL decodes (or rejects) in full below
            pass
    if pixels is None:
        pixels = np.asarray(decode_image(data))
    return resize_box(pixels, (height, width), (i, j, h, w), size)


def resize_box(pixels: np.ndarray, full_hw: tuple[int, int], box: tuple[int, int, int, int], size: int) -> Image.Image:
    """The (top, left, height, width) ``box`` of a ``full_hw`` image, resized (bicubic) to size x size
    from ``pixels``, that image decoded at full size (crop, then resize: torchvision's result)
    or at a DCT scale (the box scaled with it)."""
    i, j, h, w = box
    if pixels.shape[:2] == tuple(full_hw):
        # Cropped in numpy before PIL sees it: only the box is converted to PIL's 4-byte pixels.
        crop = Image.fromarray(np.ascontiguousarray(pixels[i: i + h, j: j + w]))
        return crop.resize((size, size), BICUBIC)
    img = Image.fromarray(pixels)
    sy, sx = pixels.shape[0] / full_hw[0], pixels.shape[1] / full_hw[1]
    return img.resize((size, size), BICUBIC, box=(j * sx, i * sy, (j + w) * sx, (i + h) * sy))


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


NO_ERASE = np.zeros(4, np.int32)


def random_erasing_box(
    img_h: int,
    img_w: int,
    rng: np.random.Generator,
    probability: float = 0.25,
    min_area: float = 0.02,
    max_area: float = 1.0 / 3.0,
    min_aspect: float = 0.3,
) -> np.ndarray:
    """timm ``RandomErasing``'s box (one box, ``max_count=1``): int32 (top, left, height, width),
    all zeros when nothing is erased.  The noise is drawn on the device (``on_device.random_erase``)."""
    if rng.random() > probability:
        return NO_ERASE
    area = img_h * img_w
    log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))
    for _ in range(10):
        target_area = rng.uniform(min_area, max_area) * area
        aspect_ratio = math.exp(rng.uniform(*log_aspect))
        h = int(round(math.sqrt(target_area * aspect_ratio)))
        w = int(round(math.sqrt(target_area / aspect_ratio)))
        if w < img_w and h < img_h:
            top = int(rng.integers(0, img_h - h + 1))
            left = int(rng.integers(0, img_w - w + 1))
            return np.array([top, left, h, w], np.int32)
    return NO_ERASE


# ---------------------------------------------------------------------------
# grain transforms.  Input examples: {"image": bytes|uint8 array,
# "label": int, "name": str}.
# ---------------------------------------------------------------------------


def _aug_get(aug, key, default):
    if aug is None:
        return default
    return aug.get(key, default) if hasattr(aug, "get") else getattr(aug, key, default)


class TrainTransform:
    """Decode + timm training augmentation on the host: ``random_map(element, rng)``.

    Output: {"image": uint8 (S, S, 3), "label": int32, "valid": float32}, plus
    "erase_box" int32 (4,) and "erase_seed" uint32 when random erasing is on
    (``aug.reprob > 0``); :func:`vheat_jax.cls.on_device.train_images` finishes the recipe.
    """

    def __init__(self, image_size: int, aug=None):
        self.image_size = int(image_size)
        self.rrc = bool(_aug_get(aug, "random_resized_crop", True))
        self.scaled_decode = bool(_aug_get(aug, "scaled_decode", True))
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
        remode = str(_aug_get(aug, "remode", "pixel"))
        if remode not in ERASE_MODES:
            raise ConfigError(f"aug.remode={remode!r} is not one of {', '.join(ERASE_MODES)}")

    def decode_and_crop(self, data: Any, rng: np.random.Generator) -> Image.Image:
        """Decoded and (random-resized-)cropped to S x S. May raise on undecodable data."""
        s = self.image_size
        if self.rrc and self.scaled_decode and is_jpeg(data):
            return scaled_decode_crop(bytes(data), s, rng)
        img = decode_image(data)
        if self.rrc:
            return random_resized_crop(img, s, rng)
        return img if img.size == (s, s) else img.resize((s, s), BICUBIC)

    def augment(self, img: Image.Image, rng: np.random.Generator) -> dict:
        if self.hflip and rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if self.randaug is not None:
            img = self.randaug(img, rng)
        elif self.color_jitter > 0:
            img = color_jitter(img, self.color_jitter, rng)
        out = {"image": np.asarray(img, np.uint8)}
        if self.reprob > 0:
            s = self.image_size
            out["erase_box"] = random_erasing_box(s, s, rng, probability=self.reprob)
            out["erase_seed"] = rng.integers(0, 2**32, dtype=np.uint32)
        return out

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        label = np.int32(element["label"])
        try:
            img = self.decode_and_crop(element["image"], rng)
        except Exception as e:  # noqa: BLE001 - any decoder failure = corrupt image
            warn_undecodable(element.get("name", "?"), e)
            s = self.image_size
            blank = {"image": np.zeros((s, s, 3), np.uint8)}
            if self.reprob > 0:
                blank.update(erase_box=NO_ERASE, erase_seed=np.uint32(0))
            return {**blank, "label": label, "valid": np.float32(0.0)}
        return {**self.augment(img, rng), "label": label, "valid": np.float32(1.0)}

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
