"""RandAugment exactly as timm's ``auto_augment.py`` defines it (PIL, host side).

Re-implemented (no timm dependency) following timm 0.4.12 -- the version the
official Swin/vHeat training code pins -- which is identical to newer timm for
the ops used here.  The only intentional difference: randomness comes from an
explicit ``numpy.random.Generator`` instead of the global ``random`` /
``np.random`` state, so results are reproducible per example in grain.

Mapping of timm's random calls:
  ``random.random()`` -> ``rng.random()``;  ``random.gauss(m, s)`` ->
  ``rng.normal(m, s)``;  ``np.random.choice(ops, n, replace=True)`` ->
  ``rng.choice(len(ops), n, replace=True)``.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

_LEVEL_DENOM = 10.0  # timm: _MAX_LEVEL / _LEVEL_DENOM
_FILL = (128, 128, 128)

# ---------------------------------------------------------------------------
# Ops (timm: shear_x, ..., sharpness).  ``kw`` carries fillcolor + resample.
# ---------------------------------------------------------------------------


def shear_x(img, factor, **kw):
    return img.transform(img.size, Image.AFFINE, (1, factor, 0, 0, 1, 0), **kw)


def shear_y(img, factor, **kw):
    return img.transform(img.size, Image.AFFINE, (1, 0, 0, factor, 1, 0), **kw)


def translate_x_rel(img, pct, **kw):
    pixels = pct * img.size[0]
    return img.transform(img.size, Image.AFFINE, (1, 0, pixels, 0, 1, 0), **kw)


def translate_y_rel(img, pct, **kw):
    pixels = pct * img.size[1]
    return img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, pixels), **kw)


def rotate(img, degrees, **kw):
    return img.rotate(degrees, **kw)


def auto_contrast(img, **_):
    return ImageOps.autocontrast(img)


def invert(img, **_):
    return ImageOps.invert(img)


def equalize(img, **_):
    return ImageOps.equalize(img)


def solarize(img, thresh, **_):
    return ImageOps.solarize(img, thresh)


def solarize_add(img, add, thresh=128, **_):
    lut = [min(255, i + add) if i < thresh else i for i in range(256)]
    if img.mode in ("L", "RGB"):
        if img.mode == "RGB":
            lut = lut + lut + lut
        return img.point(lut)
    return img


def posterize(img, bits_to_keep, **_):
    # PIL's old ImageOps.posterize LUT, which timm relies on for 0 bits (a black
    # image, reached at magnitude 10 of PosterizeIncreasing); Pillow >= 11 raises
    # for bits=0 instead.
    if bits_to_keep >= 8:
        return img
    mask = ~(2 ** (8 - int(bits_to_keep)) - 1)
    lut = [i & mask for i in range(256)]
    return img.point(lut * len(img.getbands()))


def contrast(img, factor, **_):
    return ImageEnhance.Contrast(img).enhance(factor)


def color(img, factor, **_):
    return ImageEnhance.Color(img).enhance(factor)


def brightness(img, factor, **_):
    return ImageEnhance.Brightness(img).enhance(factor)


def sharpness(img, factor, **_):
    return ImageEnhance.Sharpness(img).enhance(factor)


# ---------------------------------------------------------------------------
# Magnitude -> argument (timm: _xxx_level_to_arg).
# ---------------------------------------------------------------------------


def _randomly_negate(v, rng):
    return -v if rng.random() > 0.5 else v


def _rotate_level_to_arg(level, _hp, rng):
    return (_randomly_negate((level / _LEVEL_DENOM) * 30.0, rng),)  # [-30, 30]


def _enhance_level_to_arg(level, _hp, rng):
    return ((level / _LEVEL_DENOM) * 1.8 + 0.1,)  # [0.1, 1.9]


def _enhance_increasing_level_to_arg(level, _hp, rng):
    level = (level / _LEVEL_DENOM) * 0.9
    return (max(0.1, 1.0 + _randomly_negate(level, rng)),)  # 1 +- [0, 0.9]


def _shear_level_to_arg(level, _hp, rng):
    return (_randomly_negate((level / _LEVEL_DENOM) * 0.3, rng),)  # [-0.3, 0.3]


def _translate_rel_level_to_arg(level, hp, rng):
    pct = hp.get("translate_pct", 0.45)
    return (_randomly_negate((level / _LEVEL_DENOM) * pct, rng),)


def _posterize_level_to_arg(level, _hp, rng):
    return (int((level / _LEVEL_DENOM) * 4),)  # [0, 4]


def _posterize_increasing_level_to_arg(level, hp, rng):
    return (4 - _posterize_level_to_arg(level, hp, rng)[0],)  # [4, 0]


def _solarize_level_to_arg(level, _hp, rng):
    return (min(256, int((level / _LEVEL_DENOM) * 256)),)  # [0, 256]


def _solarize_increasing_level_to_arg(level, hp, rng):
    return (256 - _solarize_level_to_arg(level, hp, rng)[0],)  # [256, 0]


def _solarize_add_level_to_arg(level, _hp, rng):
    return (min(128, int((level / _LEVEL_DENOM) * 110)),)  # [0, 110]


NAME_TO_OP: dict[str, Callable] = {
    "AutoContrast": auto_contrast,
    "Equalize": equalize,
    "Invert": invert,
    "Rotate": rotate,
    "Posterize": posterize,
    "PosterizeIncreasing": posterize,
    "Solarize": solarize,
    "SolarizeIncreasing": solarize,
    "SolarizeAdd": solarize_add,
    "Color": color,
    "ColorIncreasing": color,
    "Contrast": contrast,
    "ContrastIncreasing": contrast,
    "Brightness": brightness,
    "BrightnessIncreasing": brightness,
    "Sharpness": sharpness,
    "SharpnessIncreasing": sharpness,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateXRel": translate_x_rel,
    "TranslateYRel": translate_y_rel,
}

LEVEL_TO_ARG: dict[str, Callable | None] = {
    "AutoContrast": None,
    "Equalize": None,
    "Invert": None,
    "Rotate": _rotate_level_to_arg,
    "Posterize": _posterize_level_to_arg,
    "PosterizeIncreasing": _posterize_increasing_level_to_arg,
    "Solarize": _solarize_level_to_arg,
    "SolarizeIncreasing": _solarize_increasing_level_to_arg,
    "SolarizeAdd": _solarize_add_level_to_arg,
    "Color": _enhance_level_to_arg,
    "ColorIncreasing": _enhance_increasing_level_to_arg,
    "Contrast": _enhance_level_to_arg,
    "ContrastIncreasing": _enhance_increasing_level_to_arg,
    "Brightness": _enhance_level_to_arg,
    "BrightnessIncreasing": _enhance_increasing_level_to_arg,
    "Sharpness": _enhance_level_to_arg,
    "SharpnessIncreasing": _enhance_increasing_level_to_arg,
    "ShearX": _shear_level_to_arg,
    "ShearY": _shear_level_to_arg,
    "TranslateXRel": _translate_rel_level_to_arg,
    "TranslateYRel": _translate_rel_level_to_arg,
}

RAND_TRANSFORMS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
RAND_INCREASING_TRANSFORMS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)


class AugmentOp:
    """timm ``AugmentOp``: apply op with ``prob``; magnitude noise via mstd."""

    def __init__(self, name: str, prob: float = 0.5, magnitude: float = 10, hparams: dict | None = None):
        hparams = dict(hparams or {})
        self.name = name
        self.aug_fn = NAME_TO_OP[name]
        self.level_fn = LEVEL_TO_ARG[name]
        self.prob = prob
        self.magnitude = magnitude
        self.hparams = hparams
        self.kwargs = dict(
            fillcolor=tuple(hparams.get("img_mean", _FILL)),
            resample=hparams.get("interpolation", Image.BICUBIC),
        )
        self.magnitude_std = hparams.get("magnitude_std", 0)
        self.magnitude_max = hparams.get("magnitude_max", _LEVEL_DENOM)

    def __call__(self, img: Image.Image, rng: np.random.Generator):
        if self.prob < 1.0 and rng.random() > self.prob:
            return img
        magnitude = self.magnitude
        if self.magnitude_std:
            if self.magnitude_std == float("inf"):
                magnitude = rng.uniform(0, magnitude)
            elif self.magnitude_std > 0:
                magnitude = rng.normal(magnitude, self.magnitude_std)
        magnitude = max(0.0, min(float(magnitude), self.magnitude_max))
        args = self.level_fn(magnitude, self.hparams, rng) if self.level_fn is not None else ()
        return self.aug_fn(img, *args, **self.kwargs)

    def __repr__(self):
        return f"AugmentOp({self.name}, p={self.prob}, m={self.magnitude})"


class RandAugment:
    """timm ``RandAugment``: ``num_layers`` ops drawn with replacement."""

    def __init__(self, ops: Sequence[AugmentOp], num_layers: int = 2):
        self.ops = list(ops)
        self.num_layers = num_layers

    def __call__(self, img: Image.Image, rng: np.random.Generator):
        for k in rng.choice(len(self.ops), self.num_layers, replace=True):
            img = self.ops[int(k)](img, rng)
        return img


def rand_augment_transform(config_str: str, hparams: dict | None = None) -> RandAugment:
    """Parses a timm RandAugment string such as ``rand-m9-mstd0.5-inc1``.

    Sections: ``m`` magnitude (0..10), ``n`` number of ops, ``mstd`` magnitude
    noise std (> 100: uniform in [0, m]), ``mmax`` magnitude upper bound, ``inc`` increasing-severity op
    set. (timm tests ``bool(val)`` on the *string*, so even ``inc0`` selects the
    increasing set there; here ``inc0`` means off.  ``inc1`` is identical.)
    Weighted op choice (``w``) is not supported.
    """
    hparams = dict(hparams or {})
    magnitude, num_layers = _LEVEL_DENOM, 2
    transforms = RAND_TRANSFORMS
    parts = config_str.split("-")
    if parts[0] != "rand":
        raise ValueError(f"Not a RandAugment config string: {config_str!r}")
    for c in parts[1:]:
        cs = re.split(r"(\d.*)", c)
        if len(cs) < 2:
            continue
        key, val = cs[:2]
        if key == "mstd":
            mstd = float(val)
            hparams.setdefault("magnitude_std", float("inf") if mstd > 100 else mstd)
        elif key == "mmax":
            hparams.setdefault("magnitude_max", int(val))
        elif key == "inc":
            if int(val):
                transforms = RAND_INCREASING_TRANSFORMS
        elif key == "m":
            magnitude = int(val)
        elif key == "n":
            num_layers = int(val)
        else:
            raise ValueError(f"Unknown RandAugment config section {c!r} in {config_str!r}")
    ops = [AugmentOp(name, prob=0.5, magnitude=magnitude, hparams=hparams) for name in transforms]
    return RandAugment(ops, num_layers)
