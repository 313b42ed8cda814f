"""Host-side (numpy + PIL + grain) classification input pipeline."""

from vheat_jax.data.digits import ensure_digits_image_folder
from vheat_jax.data.mixup import Mixup
from vheat_jax.data.pipeline import (
    create_eval_loader,
    create_train_loader,
    iterating,
    num_corrupt,
    num_eval_batches,
)
from vheat_jax.data.sources import ImageFolderSource, TfdsSource, make_source
from vheat_jax.data.transforms import EvalTransform, TrainTransform

__all__ = [
    "EvalTransform",
    "ImageFolderSource",
    "Mixup",
    "TfdsSource",
    "TrainTransform",
    "create_eval_loader",
    "create_train_loader",
    "ensure_digits_image_folder",
    "iterating",
    "make_source",
    "num_corrupt",
    "num_eval_batches",
]
