"""Detection on the shared loop: Mask R-CNN-vHeat trained as mmdetection trains it.

:class:`DetectionTask` (``config.task = "detection"``) supplies to
:mod:`vheat_jax.train.loop`:

* data: COCO-layout folders (``dataset="coco"``) or the embedded shapes demo, through
  :class:`~vheat_jax.det.data.DetLoader`: two static batch shapes (landscape / portrait
  buckets, as mmdetection's ``AspectRatioBatchSampler``), so two compilations of the
  train step; its position is stored with every checkpoint;
* the state (:mod:`vheat_jax.det.training`): mmdetection's AdamW rules and schedule;
* ``init_from``: an mmdetection Mask R-CNN ``.pth`` (the whole detector), else an
  ImageNet vHeat checkpoint (the backbone; ``.pth`` or converted);
* evaluation: every process predicts its share of the split, the COCO results are
  gathered, and every process scores them with pycocotools (box / mask mAP; the best
  checkpoint by box mAP);
* a finished run writes ``workdir/maskrcnn_mmdet.pth`` (mmdetection layout).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from vheat_jax import paths
from vheat_jax.det import checkpoint as det_checkpoint
from vheat_jax.det import detector, training
from vheat_jax.det.data import CocoSource, DetLoader
from vheat_jax.det.evaluation import coco_evaluate, predict_coco_results
from vheat_jax.det.pretrained import initial_params
from vheat_jax.errors import ConfigError
from vheat_jax.train import loop, sharding
from vheat_jax.train.streams import eval_shard_bounds

EXPORT_FILE = "maskrcnn_mmdet.pth"


def make_source(config, workdir: Path, split: str, train: bool) -> CocoSource:
    if config.dataset == "shapes":
        from vheat_jax.det.demo import make_shapes_dataset

        # Written once by process 0; a gs:// workdir keeps the demo data on the local disk instead.
        local = Path.home() / ".cache" / "vheat_jax" if paths.is_remote(workdir) else Path(workdir)
        root = Path(config.data_dir or local / "data" / "shapes")
        if jax.process_index() == 0:
            make_shapes_dataset(root, **dict(config.get("shapes", {})))
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("shapes dataset written")
        return CocoSource(root, split, train=train, min_size=1)
    if config.dataset == "coco":
        if config.data_dir and paths.is_remote(config.data_dir):
            raise ConfigError(f"config.data_dir = {config.data_dir}: the COCO reader reads local files only; "
                              "copy the data set to each host's disk")
        if not config.data_dir:
            raise ConfigError("config.data_dir is required for dataset='coco' (a COCO root with annotations/)")
        return CocoSource(config.data_dir, split, train=train)
    raise ConfigError(f"config.dataset = {config.dataset!r}: the detection trainer reads 'coco' or 'shapes'")


def gather_json(obj) -> list:
    """Every process's JSON-able ``obj``, in process order (on every process)."""
    if jax.process_count() == 1:
        return [obj]
    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.array([data.size]))
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:data.size] = data
    everything = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(row[:int(n)]).decode()) for row, n in zip(everything, sizes.reshape(-1))]


class DetectionTask(loop.Task):
    best_metric = "bbox_mAP"

    def prepare_data(self) -> int:
        config = self.config
        if config.global_batch_size % self.mesh.size or config.global_batch_size % config.loss_group_size:
            raise ConfigError(f"global_batch_size {config.global_batch_size} must be a multiple of the device "
                              f"count ({self.mesh.size}) and of loss_group_size ({config.loss_group_size})")
        self.train_source = make_source(config, self.workdir, config.train_split, train=True)
        self.eval_source = make_source(config, self.workdir, config.eval_split, train=False)
        if config.num_classes != len(self.train_source.classes):
            raise ConfigError(f"config.num_classes = {config.num_classes}, the data set has "
                              f"{len(self.train_source.classes)} classes")
        return max(len(self.train_source) // config.global_batch_size, 1)

    def build(self):
        config = self.config
        self.model, self.det_config, self.arch = training.build_model(config)
        self.name = f"Mask R-CNN {config.model.name}"
        abstract_params = jax.eval_shape(lambda key: training.init_params(self.model, key), jax.random.key(config.seed))
        self._tx, schedule = training.create_optimizer(config.optimizer, self.det_config, self.arch, abstract_params,
                                                       steps_per_epoch=self.run.steps_per_epoch)
        self._train_step = training.make_train_step(self.model, self._tx, schedule, seed=config.seed,
                                                    group_size=config.loss_group_size)
        self._predict = jax.jit(lambda p, x, hw: detector.predict(self.model, {"params": p}, x, hw))
        return jax.eval_shape(lambda p: training.new_state(p, self._tx), abstract_params)

    def initial_state(self, shardings):
        config = self.config
        params = jax.jit(lambda key: training.init_params(self.model, key))(jax.random.key(config.seed))
        if config.init_from:
            params = initial_params(config, self.det_config, self.arch, jax.device_get(params))
        return jax.jit(lambda p: training.new_state(p, self._tx), out_shardings=shardings)(params)

    def train_step(self, state, batch):
        return self._train_step(state, batch)

    def train_loader(self):
        config = self.config
        return DetLoader(self.train_source, global_batch=config.global_batch_size, scales=config.train_scales,
                         max_gt=config.max_gt, seed=config.seed, process_index=jax.process_index(),
                         process_count=jax.process_count(), num_threads=config.num_workers,
                         flip_prob=config.flip_prob)

    def evaluate(self, state) -> dict[str, float]:
        config = self.config
        start = time.perf_counter()
        params = sharding.host_tree(state.params)
        count = len(self.eval_source)
        if config.eval_max_images is not None:
            count = min(count, config.eval_max_images)
        begin, end = eval_shard_bounds(count, jax.process_index(), jax.process_count())
        results = predict_coco_results(lambda x, hw: jax.device_get(self._predict(params, x, hw)), self.eval_source,
                                       range(begin, end), scale=tuple(config.test_scale),
                                       mask_thr=self.det_config.rcnn_test.mask_thr_binary)
        everything = [entry for part in gather_json(results) for entry in part]
        image_ids = [self.eval_source.records[i].image_id for i in range(count)]
        metrics = coco_evaluate(self.eval_source.annotation_file, everything, image_ids=image_ids)
        metrics["num_images"] = count
        metrics["eval_seconds"] = time.perf_counter() - start
        return metrics

    def eval_summary(self, m: dict[str, float]) -> str:
        return (f"box mAP {m['bbox_mAP']:.4f} (AP50 {m['bbox_mAP_50']:.4f}) | mask mAP {m['segm_mAP']:.4f} "
                f"(AP50 {m['segm_mAP_50']:.4f}) | {m['num_images']} images, {m['eval_seconds']:.1f}s")

    def progress_fields(self, s: dict[str, float]) -> list[str]:
        return [f"{k[5:]} {s[k]:.3f}" for k in ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox",
                                                 "loss_mask") if k in s]

    def finish(self, state) -> dict:
        params = sharding.host_tree(state.params)
        if jax.process_index() == 0:
            det_checkpoint.export_mmdet(params, self.det_config, self.arch, self.workdir / EXPORT_FILE,
                                        classes=tuple(self.train_source.classes))
        return {}
