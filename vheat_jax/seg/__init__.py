"""Semantic segmentation: UperNet on the vHeat backbone, numerically equal to mmsegmentation.

    from vheat_jax import seg

    model, variables = seg.load_mmseg_checkpoint("upernet_vheat_tiny.pth")      # official mmseg checkpoint
    segmenter = seg.Segmenter(model, variables, seg.InferenceConfig(mode="slide"))
    labels = segmenter.predict_bgr(image_bgr_uint8)                           # mmseg's test pipeline
    seg.export_mmseg("back.pth", config, variables)                           # and back

See docs/segmentation.md for training, evaluation and the numerics.
"""

from vheat_jax.seg.convert import MMSegCheckpoint, export_mmseg, load_mmseg_checkpoint, read_mmseg_checkpoint
from vheat_jax.seg.inference import InferenceConfig, Segmenter, normalize_bgr, rescale_size, slide_windows
from vheat_jax.seg.metrics import IoUAccumulator, intersect_and_union, reduce_zero_label
from vheat_jax.seg.model import UperNet, UperNetConfig, upernet_config

__all__ = [
    "InferenceConfig", "IoUAccumulator", "MMSegCheckpoint", "Segmenter", "UperNet", "UperNetConfig",
    "export_mmseg", "intersect_and_union", "load_mmseg_checkpoint", "normalize_bgr", "read_mmseg_checkpoint",
    "reduce_zero_label", "rescale_size", "slide_windows", "upernet_config",
]
