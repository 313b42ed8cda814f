"""Embedded default dataset: scikit-learn's ``load_digits`` as an image folder.

1,797 8x8 grayscale digits (values 0..16, shipped inside scikit-learn, no
download) -> 32x32 RGB PNGs (scaled to 0..255, PIL bicubic upsampling) in
``root/train/<digit>/<idx>.png`` (1,497) and ``root/val/<digit>/<idx>.png``
(300, stratified split with a fixed seed).  ``<idx>`` is the row in
``load_digits()``.  Written atomically (temp dir + rename) and reused when the
marker file with the expected counts is present.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from vheat_jax import heartbeat

MARKER = "digits_folder.json"
IMAGE_SIZE = 32
NUM_VAL = 300
SPLIT_SEED = 0
_FORMAT_VERSION = 1


def digits_arrays():
    """Returns (images uint8 (1797, 32, 32, 3), labels int (1797,))."""
    from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel

    d = load_digits()
    imgs = np.stack([digit_to_rgb(x) for x in d.images])
    return imgs, d.target.astype(np.int64)


def digit_to_rgb(img8x8: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """8x8 float 0..16 -> (size, size, 3) uint8 (bicubic upsampling)."""
    g = np.clip(np.round(np.asarray(img8x8, np.float64) * (255.0 / 16.0)), 0, 255)
    pil = Image.fromarray(g.astype(np.uint8)).resize((size, size), Image.BICUBIC)
    return np.asarray(pil.convert("RGB"))


def digits_split(labels: np.ndarray):
    """Deterministic stratified split -> (train_indices, val_indices), sorted."""
    from sklearn.model_selection import train_test_split  # pylint: disable=import-outside-toplevel

    idx = np.arange(len(labels))
    tr, va = train_test_split(idx, test_size=NUM_VAL, stratify=labels, random_state=SPLIT_SEED)
    return np.sort(tr), np.sort(va)


def _expected_marker(n_train: int, n_val: int) -> dict:
    return {
        "version": _FORMAT_VERSION,
        "image_size": IMAGE_SIZE,
        "train": n_train,
        "val": n_val,
        "seed": SPLIT_SEED,
    }


def _is_complete(root: Path) -> bool:
    try:
        marker = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker == _expected_marker(1797 - NUM_VAL, NUM_VAL)


def ensure_digits_image_folder(root: str | os.PathLike) -> Path:
    """Writes (once) and returns the digits image folder at ``root``."""
    root = Path(root)
    if _is_complete(root):
        return root
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(
            f"{root} exists, is not empty and is not a complete digits folder "
            f"(missing/invalid {MARKER}); remove it or pick another data_dir."
        )
    with heartbeat.phase(f"writing scikit-learn's digits as an image folder in {root} (once)"):
        _write(root)
    return root


def _write(root: Path) -> None:
    root.parent.mkdir(parents=True, exist_ok=True)
    imgs, labels = digits_arrays()
    tr, va = digits_split(labels)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        for split, indices in (("train", tr), ("val", va)):
            for d in range(10):
                (tmp / split / str(d)).mkdir(parents=True)
            for i in indices:
                Image.fromarray(imgs[i]).save(tmp / split / str(labels[i]) / f"{i:04d}.png")
        (tmp / MARKER).write_text(json.dumps(_expected_marker(len(tr), len(va))))
        if root.exists():
            try:
                root.rmdir()  # empty placeholder dir
            except OSError:
                pass
        try:
            os.rename(tmp, root)
        except OSError:
            if not _is_complete(root):  # not a lost race with another writer
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
