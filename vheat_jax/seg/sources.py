"""Random-access segmentation sources: ``{"image", "label", "name"}`` per example (decoded in workers).

* :class:`ADE20KFolderSource` - ADEChallengeData2016 as released:
  ``images/{training,validation}/*.jpg`` and ``annotations/{training,validation}/*.png``
  (labels 0 = "other", 1..150 the classes; used with ``reduce_zero_label``).
* :class:`TfdsSegSource` - a TFDS data set through ``tfds.data_source`` (array_record).
  Note on ``scene_parse150``: its builder downloads the Places-challenge
  ``annotations_instance`` maps (category in the R channel, instance id in G), not the
  150-class semantic maps of ADEChallengeData2016, so it does not reproduce the
  ADE20K benchmark; use the folder for the official numbers.
* ``synthetic`` - :class:`vheat_jax.seg.synthetic.ShapesSource`, the embedded demo set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vheat_jax.paths import is_remote, read_with_retry
from vheat_jax.train.config import ConfigError

ADE20K_SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}


class ADE20KFolderSource:
    """Pairs ``images/<split>/<stem>.jpg`` with ``annotations/<split>/<stem>.png`` (sorted by name)."""

    def __init__(self, root: str | os.PathLike, split: str):
        self.root = Path(root)
        folder = ADE20K_SPLITS.get(split, split)
        image_dir, label_dir = self.root / "images" / folder, self.root / "annotations" / folder
        if not image_dir.is_dir() or not label_dir.is_dir():
            raise FileNotFoundError(f"ADE20K split {split!r} not found: need {image_dir} and {label_dir}")
        labels = {p.stem: p for p in label_dir.iterdir() if p.suffix == ".png"}
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        missing = [p.name for p in images if p.stem not in labels]
        if missing:
            raise FileNotFoundError(f"{len(missing)} image(s) in {image_dir} have no annotation in {label_dir}, "
                                    f"e.g. {', '.join(missing[:3])}")
        if not images:
            raise FileNotFoundError(f"no images in {image_dir}")
        self.pairs = [(p, labels[p.stem]) for p in images]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, label = self.pairs[index]
        return {"image": read_with_retry(image), "label": read_with_retry(label), "name": str(image)}


class TfdsSegSource:
    """``tfds.data_source(name, split)`` with image and label left encoded (decoded by the transforms)."""

    def __init__(self, name: str, split: str, data_dir: str | None = None, image_key: str = "image",
                 label_key: str = "annotation"):
        self.name, self.split, self.data_dir = name, split, data_dir
        self.image_key, self.label_key = image_key, label_key
        self._ds = None
        self._len = len(self._source())

    def _source(self):
        if self._ds is None:
            import tensorflow_datasets as tfds

            skip = tfds.decode.SkipDecoding()
            self._ds = tfds.data_source(self.name, split=self.split, data_dir=self.data_dir, download=False,
                                        decoders={self.image_key: skip, self.label_key: skip})
        return self._ds

    def __getstate__(self):
        return {**self.__dict__, "_ds": None}  # reopened in each worker process

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self._source()[int(index)]
        return {"image": example[self.image_key], "label": example[self.label_key],
                "name": f"{self.name}/{self.split}[{index}]"}


def make_seg_source(config, split: str):
    """The source for ``config.dataset`` in {"ade20k", "tfds", "synthetic"}."""
    if config.dataset == "ade20k":
        if config.data_dir and is_remote(config.data_dir):
            raise ConfigError(f"config.data_dir = {config.data_dir}: the ADE20K folder reader reads local files only; "
                              "copy the data set to each host's disk")
        if not config.data_dir:
            raise ConfigError("config.data_dir must point at ADEChallengeData2016 (images/, annotations/): "
                              "set --config.data_dir=...")
        return ADE20KFolderSource(config.data_dir, split)
    if config.dataset == "tfds":
        return TfdsSegSource(config.tfds_name, split, config.data_dir or None)
    if config.dataset == "synthetic":
        from vheat_jax.seg.synthetic import ShapesSource

        return ShapesSource(split, **config.synthetic)
    raise ConfigError(f"config.dataset = {config.dataset!r}: expected 'ade20k', 'tfds' or 'synthetic'")
