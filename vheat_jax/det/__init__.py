"""Mask R-CNN with FPN on the vHeat backbone, equal to mmdetection 3.x (see docs/detection.md).

* :class:`Detector` - images in, boxes / scores / labels / masks out; ``Detector.from_mmdet(path)``.
* :func:`predict` - the jittable batched test-time forward pass (static shapes).
* :func:`read_mmdet_checkpoint` / :func:`export_mmdet` - mmdetection checkpoints, torch-free, strict.
* :class:`MaskRCNN`, :class:`MaskRCNNConfig` - the Flax module and its settings.
* :func:`detection_loss`, :mod:`vheat_jax.det.training`, :mod:`vheat_jax.det.task` - training (on the shared loop).
* :func:`batched_nms`, :func:`multilevel_roi_align`, :func:`paste_masks`; the submodules ``nms``,
  ``roi_align``, ``preprocess`` hold the single-level / single-group forms and the test pipeline.
"""

from vheat_jax.det.api import Detections, Detector
from vheat_jax.det.checkpoint import export_mmdet, read_mmdet_checkpoint
from vheat_jax.det.detector import predict
from vheat_jax.det.losses import detection_loss
from vheat_jax.det.masks import paste_masks, paste_masks_numpy, rescale_boxes
from vheat_jax.det.model import MaskRCNN
from vheat_jax.det.model_config import MaskRCNNConfig
from vheat_jax.det.nms import batched_nms
from vheat_jax.det.preprocess import resize_bilinear_uint8
from vheat_jax.det.roi_align import multilevel_roi_align

__all__ = [
    "Detections", "Detector", "MaskRCNN", "MaskRCNNConfig", "batched_nms", "detection_loss", "export_mmdet",
    "multilevel_roi_align", "paste_masks", "paste_masks_numpy", "predict", "read_mmdet_checkpoint",
    "rescale_boxes", "resize_bilinear_uint8",
]
