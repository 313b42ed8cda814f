"""What ``predict.py`` draws and prints: top-k classes, segmentation and detection overlays as PNGs.

Each task's own inference path does the work (eval.py's model preparation and eval transform,
mmseg's test pipeline through :class:`~vheat_jax.seg.inference.Segmenter`, mmdet's through
:class:`~vheat_jax.det.api.Detector`), so what is drawn is what the evaluators score.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from vheat_jax.errors import UndecodableImageError
from vheat_jax.paths import as_path

OVERLAY_ALPHA = 0.5


def read_rgb(image: str | os.PathLike) -> np.ndarray:
    try:
        with Image.open(image) as opened:
            return np.asarray(opened.convert("RGB"))
    except OSError as err:
        raise UndecodableImageError(f"{image}: not an image PIL can decode ({err})") from None


def palette(num_classes: int) -> np.ndarray:
    """A fixed colour per class (uint8 RGB), the same in every run."""
    return np.random.default_rng(0).integers(40, 256, (max(num_classes, 1), 3)).astype(np.uint8)


@dataclasses.dataclass
class Classifier:
    """A classifier with eval.py's preparation (inference form, the config's resize and centre crop)."""

    model: object
    params: dict
    transform: object

    @classmethod
    def load(cls, checkpoint: str, config, *, ema: bool = False) -> Classifier:
        from vheat_jax.cls import evaluation  # noqa: PLC0415 - the training stack only where it is needed
        from vheat_jax.cls.transforms import EvalTransform  # noqa: PLC0415

        arch, params, _ = evaluation.load_for_eval(checkpoint, config, ema=ema)
        model, params = evaluation.prepare_model(arch, params, form="infer", img_size=config.image_size,
                                               dtype=jnp.float32)
        return cls(model, params, EvalTransform(config.image_size, config.aug.get("crop_pct", 0.875)))

    def top_k(self, image: str, k: int, labels: Sequence[str] | None = None) -> list[dict]:
        pixels = self.transform.transform_image(Image.fromarray(read_rgb(image)))
        logits = jax.jit(self.model.apply)({"params": self.params}, pixels[None])[0]
        probs = np.asarray(jax.nn.softmax(logits))
        order = np.argsort(-probs)[:k]
        return [{"class": int(c), **({"name": labels[c]} if labels and c < len(labels) else {}),
                 "prob": round(float(probs[c]), 6)} for c in order]


def segmentation_overlays(checkpoint: str, images: Sequence[str], out, **_) -> Iterator[Path]:
    """Writes ``out/<stem>_seg.png`` (the class map blended over the image) per image, as mmseg predicts it."""
    from vheat_jax.seg.convert import read_mmseg_checkpoint  # noqa: PLC0415
    from vheat_jax.seg.inference import InferenceConfig, Segmenter  # noqa: PLC0415

    ckpt = read_mmseg_checkpoint(checkpoint)
    test = {key: tuple(value) if isinstance(value, (list, tuple)) else value
            for key, value in ckpt.test_cfg.items() if key in ("mode", "crop_size", "stride")}
    segmenter = Segmenter(ckpt.model, ckpt.variables, InferenceConfig(**test, scale=None))
    colours = palette(ckpt.config.num_classes)
    for image in images:
        rgb = read_rgb(image)
        labels = segmenter.predict_bgr(np.ascontiguousarray(rgb[..., ::-1]))
        blended = (1 - OVERLAY_ALPHA) * rgb + OVERLAY_ALPHA * colours[labels]
        yield _save(blended, out, image, "seg")


def detection_overlays(checkpoint: str, images: Sequence[str], out, *, score_thr: float,
                       scale: tuple[int, int]) -> Iterator[Path]:
    """Writes ``out/<stem>_det.png`` (masks, boxes, class and score at or above ``score_thr``) per image."""
    from vheat_jax.det.api import Detector  # noqa: PLC0415

    detector = Detector.from_mmdet(checkpoint, scale=scale)
    colours = palette(detector.config.num_classes)
    for image in images:
        rgb = read_rgb(image)
        found = detector([np.ascontiguousarray(rgb[..., ::-1])])[0]
        keep = found.scores >= score_thr
        canvas = rgb.astype(np.float32)
        for mask, label in zip(found.masks[keep], found.labels[keep]):
            canvas[mask] = (1 - OVERLAY_ALPHA) * canvas[mask] + OVERLAY_ALPHA * colours[label]
        picture = Image.fromarray(canvas.astype(np.uint8))
        draw = ImageDraw.Draw(picture)
        for box, label, score in zip(found.boxes[keep], found.labels[keep], found.scores[keep]):
            colour = tuple(int(c) for c in colours[label])
            draw.rectangle([float(v) for v in box], outline=colour, width=2)
            name = detector.classes[label] if detector.classes else str(int(label))
            draw.text((float(box[0]) + 2, float(box[1]) + 1), f"{name} {score:.2f}", fill=colour)
        yield _save(np.asarray(picture), out, image, "det")


def _save(pixels: np.ndarray, out, image: str, suffix: str) -> Path:
    path = as_path(out) / f"{Path(image).stem}_{suffix}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(f, format="PNG")
    return path
