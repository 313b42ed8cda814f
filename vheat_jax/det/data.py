"""COCO-layout instance data for training and evaluation (pycocotools), as mmdetection loads it.

* :class:`CocoSource` reads ``annotations/instances_<split>.json`` and
  ``<split>/`` images (COCO's own layout) with pycocotools, applying mmdetection's
  ``CocoDataset`` rules: boxes ``[x, y, w, h] -> [x, y, x + w, y + h]``; annotations
  with zero overlap with the image, ``area <= 0``, ``w < 1`` or ``h < 1`` dropped;
  ``iscrowd`` ones set aside (mmdet ignores them in training; COCOeval uses them);
  training keeps images with at least one box and both sides >= 32 px
  (``filter_cfg=dict(filter_empty_gt=True, min_size=32)``). Labels are 0-based
  indices into the sorted category ids. Images are decoded with PIL (mmdetection
  uses OpenCV's decoder: JPEG IDCTs may differ by a grey level here and there).
* :class:`TfdsCocoSource` reads TFDS ``coco/2017`` where ``tensorflow_datasets``
  and the prepared data are available (boxes and masks from TFDS's features).
* :func:`train_example` applies mmdetection's train pipeline: random keep-ratio
  resize scale (one for 1x, a choice of scales for multi-scale), OpenCV-exact
  bilinear resize (:mod:`vheat_jax.det.preprocess`), nearest-neighbour mask resize
  (``mmcv.imrescale(..., 'nearest')``), horizontal flip with probability 0.5,
  normalisation, zero padding to the batch's static shape.
* :class:`DetLoader` groups images by orientation (mmdetection's
  ``AspectRatioBatchSampler``) so every batch has one of two static shapes,
  loads them with threads, and can save and restore its position.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import io
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from vheat_jax.det import preprocess
from vheat_jax.paths import read_with_retry


@dataclasses.dataclass
class Record:
    image_id: int
    file: str
    height: int
    width: int
    boxes: np.ndarray  # (N, 4) float32, x1 y1 x2 y2, original pixels
    labels: np.ndarray  # (N,) int32
    segmentations: list  # N COCO segmentations (polygons or RLE)


class CocoSource:
    """Images and instances of one COCO split (``root/<split>``, ``root/annotations/instances_<split>.json``)."""

    def __init__(self, root: str | Path, split: str, *, train: bool, annotation_file: str | Path | None = None,
                 image_dir: str | Path | None = None, min_size: int = 32):
        from pycocotools.coco import COCO

        root = Path(root)
        self.annotation_file = Path(annotation_file or root / "annotations" / f"instances_{split}.json")
        self.image_dir = Path(image_dir or root / split)
        with contextlib.redirect_stdout(io.StringIO()):  # "loading annotations into memory..." and its timing
            self.coco = COCO(str(self.annotation_file))
        self.cat_ids = sorted(self.coco.getCatIds())
        self.cat2label = {cat: i for i, cat in enumerate(self.cat_ids)}
        self.classes = tuple(self.coco.loadCats(cat)[0]["name"] for cat in self.cat_ids)
        self.records: list[Record] = []
        for image_id in sorted(self.coco.getImgIds()):
            info = self.coco.loadImgs(image_id)[0]
            record = self._parse(info, self.coco.loadAnns(self.coco.getAnnIds(imgIds=[image_id])))
            if train and (len(record.boxes) == 0 or min(info["width"], info["height"]) < min_size):
                continue
            self.records.append(record)

    def _parse(self, info, anns) -> Record:
        boxes, labels, segs = [], [], []
        for ann in anns:
            x1, y1, w, h = ann["bbox"]
            inter_w = max(0, min(x1 + w, info["width"]) - max(x1, 0))
            inter_h = max(0, min(y1 + h, info["height"]) - max(y1, 0))
            if inter_w * inter_h == 0 or ann["area"] <= 0 or w < 1 or h < 1:
                continue
            if ann["category_id"] not in self.cat2label or ann.get("iscrowd", 0):
                continue
            boxes.append([x1, y1, x1 + w, y1 + h])
            labels.append(self.cat2label[ann["category_id"]])
            segs.append(ann.get("segmentation"))
        return Record(info["id"], str(self.image_dir / info["file_name"]), info["height"], info["width"],
                      np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int32), segs)

    def __len__(self) -> int:
        return len(self.records)

    def load_image(self, index: int) -> np.ndarray:
        """uint8 BGR (H, W, 3), as mmdetection's ``LoadImageFromFile``."""
        data = read_with_retry(self.records[index].file)  # I/O errors retried, then a clear stop
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))[:, :, ::-1].copy()

    def load_masks(self, index: int) -> np.ndarray:
        """(N, H, W) uint8 instance masks at the original size."""
        from pycocotools import mask as mask_utils

        record = self.records[index]
        out = np.zeros((len(record.segmentations), record.height, record.width), np.uint8)
        for i, seg in enumerate(record.segmentations):
            if seg is None:
                continue
            if isinstance(seg, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, record.height, record.width))
            elif isinstance(seg.get("counts"), list):
                rle = mask_utils.frPyObjects(seg, record.height, record.width)
            else:
                rle = seg
            with warnings.catch_warnings():  # pycocotools' numpy-2 copy= deprecation notice
                warnings.simplefilter("ignore", DeprecationWarning)
                out[i] = mask_utils.decode(rle)
        return out


class TfdsCocoSource:
    """TFDS ``coco/2017`` (needs tensorflow_datasets with the data prepared under ``data_dir``)."""

    def __init__(self, split: str, *, train: bool, data_dir: str | None = None, min_size: int = 32):
        import tensorflow_datasets as tfds

        builder = tfds.builder("coco/2017", data_dir=data_dir)
        self.classes = tuple(builder.info.features["objects"]["label"].names)
        self._source = tfds.data_sources.load("coco/2017", split=split, data_dir=data_dir) \
            if hasattr(tfds, "data_sources") else builder.as_data_source(split=split)
        self._index = [i for i in range(len(self._source))
                       if not train or self._usable(self._source[i], min_size)]
        self.records = None

    @staticmethod
    def _usable(example, min_size) -> bool:
        height, width = example["image"].shape[:2]
        return min(height, width) >= min_size and np.any(~np.asarray(example["objects"]["is_crowd"], bool))

    def __len__(self) -> int:
        return len(self._index)

    def example(self, index: int):
        example = self._source[self._index[index]]
        image = np.asarray(example["image"])[:, :, ::-1].copy()  # RGB -> BGR
        height, width = image.shape[:2]
        keep = ~np.asarray(example["objects"]["is_crowd"], bool)
        ymin, xmin, ymax, xmax = np.asarray(example["objects"]["bbox"], np.float32)[keep].T
        boxes = np.stack([xmin * width, ymin * height, xmax * width, ymax * height], -1).astype(np.float32)
        labels = np.asarray(example["objects"]["label"], np.int32)[keep]
        return image, boxes, labels, None


# --------------------------------------------------------------------------- transforms


def resize_nearest(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """OpenCV ``INTER_NEAREST``: source index ``floor(dst * src / dst_size)``, clamped."""
    src_h, src_w = mask.shape[-2:]
    ys = np.minimum(np.floor(np.arange(height) * (src_h / height)).astype(np.int64), src_h - 1)
    xs = np.minimum(np.floor(np.arange(width) * (src_w / width)).astype(np.int64), src_w - 1)
    return mask[..., ys[:, None], xs[None, :]]


def train_example(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, masks: np.ndarray | None,
                  rng: np.random.Generator, *, scales: Sequence[tuple[int, int]], flip_prob: float = 0.5):
    """mmdet train pipeline on one image -> (normalised image HWC, img_hw, boxes, labels, masks)."""
    scale = scales[int(rng.integers(len(scales)))] if len(scales) > 1 else scales[0]
    height, width = image.shape[:2]
    new_w, new_h = preprocess.rescale_size(width, height, scale)
    image = preprocess.resize_bilinear_uint8(image, new_w, new_h)
    w_scale, h_scale = new_w / width, new_h / height
    boxes = boxes * np.asarray([w_scale, h_scale, w_scale, h_scale], np.float32)
    boxes = np.clip(boxes, 0, [new_w, new_h, new_w, new_h]).astype(np.float32)
    if masks is not None:
        masks = resize_nearest(masks, new_w, new_h)
    if flip_prob > 0 and rng.uniform() < flip_prob:
        image = image[:, ::-1]
        boxes = np.stack([new_w - boxes[:, 2], boxes[:, 1], new_w - boxes[:, 0], boxes[:, 3]], -1)
        if masks is not None:
            masks = masks[:, :, ::-1]
    return preprocess.normalize(image), (new_h, new_w), boxes, labels, masks


def pack(examples, pad_shape: tuple[int, int], max_gt: int, *, with_masks: bool = True) -> dict[str, np.ndarray]:
    """Pads a list of ``train_example`` outputs to one static batch."""
    batch = len(examples)
    out = {
        "image": np.zeros((batch, *pad_shape, 3), np.float32),
        "img_hw": np.zeros((batch, 2), np.float32),
        "gt_boxes": np.zeros((batch, max_gt, 4), np.float32),
        "gt_labels": np.zeros((batch, max_gt), np.int32),
        "gt_valid": np.zeros((batch, max_gt), bool),
        "gt_masks": np.zeros((batch, max_gt, *pad_shape) if with_masks else (batch, max_gt, 1, 1), np.uint8),
        "image_valid": np.zeros((batch,), bool),
    }
    for b, example in enumerate(examples):
        if example is None:
            continue
        image, (img_h, img_w), boxes, labels, masks = example
        out["image"][b, :img_h, :img_w] = image
        out["img_hw"][b] = img_h, img_w
        n = min(len(boxes), max_gt)
        out["gt_boxes"][b, :n] = boxes[:n]
        out["gt_labels"][b, :n] = labels[:n]
        out["gt_valid"][b, :n] = True
        if with_masks and masks is not None:
            out["gt_masks"][b, :n, :img_h, :img_w] = masks[:n]
        out["image_valid"][b] = True
    return out


def bucket_shapes(scales: Sequence[tuple[int, int]], divisor: int = 32) -> dict[str, tuple[int, int]]:
    """The two static padded shapes (landscape, portrait) that hold every resized image."""
    long_edge = max(max(s) for s in scales)
    short_edge = max(min(s) for s in scales)

    def pad(v):
        return int(math.ceil(v / divisor) * divisor)

    return {"landscape": (pad(short_edge), pad(long_edge)), "portrait": (pad(long_edge), pad(short_edge))}


class DetLoader:
    """Infinite training batches, grouped by orientation, with a restorable position.

    Each process gets rows ``[p * local, (p + 1) * local)`` of every global batch.
    The order is a function of (seed, epoch) only, so a restored loader continues
    with exactly the batches an uninterrupted run would have seen.
    """

    def __init__(self, source: CocoSource, *, global_batch: int, scales: Sequence[tuple[int, int]], max_gt: int,
                 seed: int = 0, process_index: int = 0, process_count: int = 1, num_threads: int = 8,
                 flip_prob: float = 0.5):
        if global_batch % process_count:
            raise ValueError(f"global batch {global_batch} is not a multiple of the process count {process_count}")
        self.source, self.global_batch, self.scales, self.max_gt = source, global_batch, list(scales), max_gt
        self.seed, self.flip_prob = seed, flip_prob
        self.local = global_batch // process_count
        self.offset = process_index * self.local
        self.shapes = bucket_shapes(self.scales)
        self.epoch, self.position, self.pending = 0, 0, {"landscape": [], "portrait": []}
        self._pool = concurrent.futures.ThreadPoolExecutor(num_threads)

    def orientation(self, index: int) -> str:
        record = self.source.records[index]
        return "landscape" if record.width >= record.height else "portrait"

    def get_state(self) -> bytes:
        """The position as JSON bytes (what grain's checkpoint handler stores for non-grain iterators)."""
        return json.dumps({"epoch": self.epoch, "position": self.position, "pending": self.pending}).encode()

    def set_state(self, state: bytes) -> None:
        state = json.loads(state)
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.pending = {k: [int(i) for i in v] for k, v in state["pending"].items()}

    def start_prefetch(self) -> None:
        """Nothing to start: batches are loaded when asked for (called by the checkpoint handler)."""

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def steps_per_epoch(self) -> int:
        return len(self.source) // self.global_batch

    def _next_indices(self) -> tuple[str, list[int]]:
        while True:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.source))
            while self.position < len(order):
                index = int(order[self.position])
                self.position += 1
                group = self.pending[self.orientation(index)]
                group.append(index)
                if len(group) == self.global_batch:
                    self.pending[self.orientation(index)] = []
                    return self.orientation(index), group
            self.epoch, self.position = self.epoch + 1, 0

    def _load(self, index: int, step_seed):
        rng = np.random.default_rng([self.seed, *step_seed, index])
        record = self.source.records[index]
        return train_example(self.source.load_image(index), record.boxes, record.labels,
                             self.source.load_masks(index), rng, scales=self.scales, flip_prob=self.flip_prob)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        epoch, position = self.epoch, self.position
        orientation, indices = self._next_indices()
        mine = indices[self.offset:self.offset + self.local]
        examples = list(self._pool.map(lambda i: self._load(i, (epoch, position)), mine))
        return pack(examples, self.shapes[orientation], self.max_gt)


def write_coco_json(path: str | Path, images: list[dict], annotations: list[dict], classes: Sequence[str]) -> None:
    payload = {"images": images, "annotations": annotations,
               "categories": [{"id": i + 1, "name": name} for i, name in enumerate(classes)]}
    Path(path).write_text(json.dumps(payload))
