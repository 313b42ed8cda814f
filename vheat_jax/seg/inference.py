"""mmseg's test-time pipeline: rescale, normalise, whole-image or sliding-window inference, argmax.

Per image, as mmseg 1.x runs it:

1. ``Resize(scale=(2048, 512), keep_ratio=True)``: mmcv ``imrescale``, scale factor
   ``min(2048 / long side, 512 / short side)``, new size ``int(w * s + 0.5)`` x
   ``int(h * s + 0.5)``, OpenCV bilinear (:func:`~vheat_jax.seg.cv_ops.resize_bilinear_u8`,
   bit-exact with OpenCV 4.11).
2. ``SegDataPreProcessor``: BGR -> RGB, ``(x - mean) / std`` in float32; no padding.
3. ``whole``: the decode head's stride-4 logits resized bilinearly to the input size.
   ``slide``: windows of ``crop_size`` every ``stride`` (the last one in each direction
   moved back inside the image), each window's logits resized to the window,
   summed, divided by the per-pixel window count.
4. The logits resized bilinearly to the original image size, argmax over classes.

Compilation. The network runs once per image on a batch of all its windows (one
``jit`` call). Slide windows all have the crop's shape, so the network compiles
once per window-count bucket (powers of two, times the local device count, which the
windows are split over). The cheap part that depends on the image size (summing the
windows, the final resize, the argmax) is a second ``jit`` whose canvas and output
sizes are rounded up to multiples of ``size_bucket`` (the final resize's taps passed
as zero-padded arrays), so it compiles once per bucket, not per image size. Whole-image
mode runs the network at the image's own size (padding would change the result: the
heat operator is global), so it compiles per distinct input shape.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vheat_jax.seg.cv_ops import resize_bilinear_u8
from vheat_jax.seg.model import UperNet
from vheat_jax.seg.resample import bilinear_taps, resize_hwc_with_taps

MEAN = np.array([123.675, 116.28, 103.53], np.float32)  # RGB
STD = np.array([58.395, 57.12, 57.375], np.float32)


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
    """mmseg's ``model.test_cfg`` plus the test pipeline's resize scale."""

    mode: str = "slide"  # "slide" | "whole"
    crop_size: tuple[int, int] = (512, 512)
    stride: tuple[int, int] = (341, 341)
    scale: tuple[int, int] = (2048, 512)  # Resize(scale=..., keep_ratio=True); None: no resize

    def __post_init__(self):
        if self.mode not in ("slide", "whole"):
            raise ValueError(f"test mode must be 'slide' or 'whole', got {self.mode!r}")


def rescale_size(hw: tuple[int, int], scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv ``rescale_size``: the largest size with the same aspect ratio inside ``scale`` (either orientation)."""
    h, w = hw
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def normalize_bgr(image_bgr: np.ndarray) -> np.ndarray:
    """HWC uint8 BGR -> HWC float32 RGB, ``(x - mean) / std`` (mmseg's ``SegDataPreProcessor``)."""
    return (image_bgr[..., ::-1].astype(np.float32) - MEAN) / STD


def slide_windows(hw: tuple[int, int], crop: tuple[int, int],
                  stride: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """mmseg's window grid ``(y1, y2, x1, x2)``: row-major, last window moved back to end at the border."""
    (h, w), (hc, wc), (hs, ws) = hw, crop, stride
    rows = max(h - hc + hs - 1, 0) // hs + 1
    cols = max(w - wc + ws - 1, 0) // ws + 1
    windows = []
    for i in range(rows):
        for j in range(cols):
            y2, x2 = min(i * hs + hc, h), min(j * ws + wc, w)
            windows.append((max(y2 - hc, 0), y2, max(x2 - wc, 0), x2))
    return windows


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _padded_taps(in_size: int, out_size: int, out_padded: int) -> tuple[np.ndarray, ...]:
    """:func:`bilinear_taps` for ``out_size`` outputs, padded to ``out_padded`` with zero-weight taps."""
    pad = out_padded - out_size
    return tuple(np.pad(taps, (0, pad)) for taps in bilinear_taps(in_size, out_size))


@functools.partial(jax.jit, static_argnames=("window_hw", "canvas_hw", "with_logits"))
def _assemble(window_logits, origins, valid, count, rows, cols, *, window_hw, canvas_hw, with_logits):
    """Sum of the windows' logits (each resized to the window) / count, resized to the output, argmax."""
    num_classes = window_logits.shape[-1]
    to_window = (bilinear_taps(window_logits.shape[1], window_hw[0]),
                 bilinear_taps(window_logits.shape[2], window_hw[1]))

    def add_window(i, canvas):
        window = resize_hwc_with_taps(window_logits[i], *to_window) * valid[i]
        corner = (origins[i, 0], origins[i, 1], 0)
        current = jax.lax.dynamic_slice(canvas, corner, (*window_hw, num_classes))
        return jax.lax.dynamic_update_slice(canvas, current + window, corner)

    canvas = jax.lax.fori_loop(0, window_logits.shape[0], add_window,
                               jnp.zeros((*canvas_hw, num_classes), jnp.float32))
    canvas = canvas / jnp.maximum(count, 1.0)[..., None]  # count is 0 only on the bucket's padding
    logits = resize_hwc_with_taps(canvas, rows, cols)
    labels = jnp.argmax(logits, -1).astype(jnp.int32)
    return (labels, logits) if with_logits else labels


class Segmenter:
    """Runs an :class:`~vheat_jax.seg.model.UperNet` as mmseg's ``EncoderDecoder.predict``.

    ``devices``: the (local) devices that share each image's windows (default: this
    process's devices). Variables are replicated over them.
    """

    def __init__(self, model: UperNet, variables, test_cfg: InferenceConfig = InferenceConfig(), *, devices=None,
                 size_bucket: int = 64):
        self.model, self.test_cfg, self.size_bucket = model, test_cfg, size_bucket
        devices = list(jax.local_devices() if devices is None else devices)
        self._mesh = Mesh(np.asarray(devices), ("windows",))
        self._windows_sharding = NamedSharding(self._mesh, PartitionSpec("windows"))
        self.set_variables(variables)
        self._decode = jax.jit(functools.partial(model.apply, method="decode"))

    def set_variables(self, variables) -> None:
        """New weights for the same model (no recompilation)."""
        self.variables = jax.device_put(variables, NamedSharding(self._mesh, PartitionSpec()))

    def _windows(self, hw):
        if self.test_cfg.mode == "whole":
            return [(0, hw[0], 0, hw[1])]
        return slide_windows(hw, self.test_cfg.crop_size, self.test_cfg.stride)

    def _window_batch_size(self, n: int) -> int:
        devices = self._mesh.size
        return _round_up(max(1 << (n - 1).bit_length(), devices), devices)

    def _run(self, inputs: np.ndarray, out_hw, with_logits: bool):
        h, w = inputs.shape[:2]
        out_hw = (h, w) if out_hw is None else tuple(out_hw)
        windows = self._windows((h, w))
        window_hw = (windows[0][1] - windows[0][0], windows[0][3] - windows[0][2])
        batch = np.zeros((self._window_batch_size(len(windows)), *window_hw, 3), np.float32)
        origins = np.zeros((len(batch), 2), np.int32)
        valid = np.zeros((len(batch),), np.float32)
        canvas_hw = (_round_up(h, self.size_bucket), _round_up(w, self.size_bucket))
        count = np.zeros(canvas_hw, np.float32)
        for k, (y1, y2, x1, x2) in enumerate(windows):
            batch[k] = inputs[y1:y2, x1:x2]
            origins[k], valid[k] = (y1, x1), 1.0
            count[y1:y2, x1:x2] += 1
        logits = self._decode(self.variables, jax.device_put(batch, self._windows_sharding))
        out_padded = (_round_up(out_hw[0], self.size_bucket), _round_up(out_hw[1], self.size_bucket))
        result = _assemble(
            logits, origins, valid, count,
            _padded_taps(h, out_hw[0], out_padded[0]), _padded_taps(w, out_hw[1], out_padded[1]),
            window_hw=window_hw, canvas_hw=canvas_hw, with_logits=with_logits)
        crop = (slice(0, out_hw[0]), slice(0, out_hw[1]))
        if with_logits:
            labels, logits = jax.device_get(result)
            return labels[crop], logits[crop]
        return jax.device_get(result)[crop]

    def predict(self, inputs: np.ndarray, out_hw: tuple[int, int] | None = None) -> np.ndarray:
        """Labels (int32, ``out_hw``, default the input size) for one normalised HWC float32 RGB image."""
        return self._run(np.asarray(inputs, np.float32), out_hw, with_logits=False)

    def logits(self, inputs: np.ndarray, out_hw: tuple[int, int] | None = None) -> np.ndarray:
        """Class logits (float32, ``(*out_hw, classes)``) for one normalised image; ``predict`` is their argmax."""
        return self._run(np.asarray(inputs, np.float32), out_hw, with_logits=True)[1]

    def predict_bgr(self, image_bgr: np.ndarray) -> np.ndarray:
        """The whole mmseg test pipeline on an HWC uint8 BGR image: labels at the image's size."""
        hw = image_bgr.shape[:2]
        if self.test_cfg.scale is not None:
            image_bgr = resize_bilinear_u8(image_bgr, rescale_size(hw, self.test_cfg.scale))
        return self.predict(normalize_bgr(image_bgr), out_hw=hw)
