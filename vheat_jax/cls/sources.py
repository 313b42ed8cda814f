"""Random-access sources yielding encoded images (decoded later, in workers).

Every source returns ``{"image": bytes | uint8 array, "label": int,
"name": str}`` and implements ``__len__``/``__getitem__`` (grain's
RandomAccessDataSource protocol).  Sources are cheap to pickle: heavy handles
are opened lazily in each worker process.
"""

from __future__ import annotations

import os
from typing import Any

from vheat_jax.errors import ConfigError
from vheat_jax.paths import as_path, read_with_retry

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")

class ImageFolderSource:
    """ImageNet-style folder ``root/<split>/<class>/*.{JPEG,jpg,jpeg,png}``.

    Classes are the sorted sub-directory names (label = position in that list,
    as torchvision's ImageFolder); files within a class are sorted by name.
    Returns raw encoded bytes (decoding happens in the transform).
    """

    def __init__(self, root: str | os.PathLike, split: str):
        self.root = as_path(root)  # local or gs://
        self.split = split
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise FileNotFoundError(
                f"image folder split not found: {split_dir} (config.data_dir must hold {split}/<class>/<image> folders)"
            )
        self.classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
        if not self.classes:
            raise FileNotFoundError(f"no class directories in {split_dir} (expected {split_dir}/<class>/<image>)")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        files, labels = [], []
        for c in self.classes:
            # One listing per class, no stat per file (on gs:// each stat is a request).
            names = sorted(e.name for e in (split_dir / c).iterdir() if e.name.lower().endswith(IMAGE_EXTENSIONS))
            files.extend(f"{c}/{n}" for n in names)
            labels.extend([self.class_to_idx[c]] * len(names))
        if not files:
            raise FileNotFoundError(
                f"no images under {split_dir} (expected {split_dir}/<class>/<image> with one of "
                f"{', '.join(IMAGE_EXTENSIONS)})"
            )
        self.files = files
        self.labels = labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.root / self.split / self.files[index]
        return {"image": read_with_retry(path), "label": self.labels[index], "name": str(path)}

    def __repr__(self) -> str:
        return f"ImageFolderSource(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"


class TfdsSource:
    """``tfds.data_source`` (array_record) with the image left *encoded*.

    Uses ``decoders={"image": tfds.decode.SkipDecoding()}`` so the TF-free numpy
    path returns the JPEG bytes and decoding happens in our transform (so
    corrupt images are caught and counted like for folders).  If a dataset's
    image comes back already decoded (uint8 array), that is accepted as well.
    """

    def __init__(
        self,
        name: str,
        split: str,
        data_dir: str | None = None,
        image_key: str = "image",
        label_key: str = "label",
    ):
        self.name = name
        self.split = split
        self.data_dir = None if data_dir is None else str(data_dir)
        self.image_key = image_key
        self.label_key = label_key
        self._ds = None
        self._len = len(self._source())

    def _source(self):
        if self._ds is None:
            import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

            self._ds = tfds.data_source(
                self.name,
                split=self.split,
                data_dir=self.data_dir,
                download=False,
                decoders={self.image_key: tfds.decode.SkipDecoding()},
            )
        return self._ds

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_ds"] = None  # reopened lazily in each worker process
        return state

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex = self._source()[int(index)]
        name = ex.get("file_name", None)
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        return {
            "image": ex[self.image_key],
            "label": int(ex[self.label_key]),
            "name": f"{self.name}/{self.split}[{index}]" + (f" ({name})" if name else ""),
        }

    def __repr__(self) -> str:
        return (
            f"TfdsSource(name={self.name!r}, split={self.split!r}, data_dir={self.data_dir!r}, n={len(self)})"
        )


def make_source(config, split: str):
    """Builds the source for ``config.dataset`` in {imagefolder, tfds, digits}."""
    kind = config.dataset
    if kind == "imagefolder":
        return ImageFolderSource(config.data_dir, split)
    if kind == "digits":
        from vheat_jax.cls.digits import ensure_digits_image_folder  # pylint: disable=import-outside-toplevel

        return ImageFolderSource(ensure_digits_image_folder(config.data_dir), split)
    if kind == "tfds":
        return TfdsSource(config.tfds_name, split, config.get("data_dir", None) or None)
    raise ConfigError(f"config.dataset = {kind!r}: expected 'imagefolder', 'tfds' or 'digits'")
