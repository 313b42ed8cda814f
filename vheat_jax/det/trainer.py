"""``train_and_evaluate``: Mask R-CNN training on COCO-layout data, sharded like the classification trainer.

* One process per host (``vheat_jax.train.distributed``), a 1-D ``data`` mesh over all
  devices (``vheat_jax.train.sharding``); each process loads its rows of the global
  batch, assembled with ``global_batch``; parameters and optimizer state replicated;
  XLA inserts the gradient all-reduce.
* Two static batch shapes (landscape / portrait buckets, as mmdetection's
  ``AspectRatioBatchSampler``), so two compilations of the train step.
* Orbax checkpoints of the train state plus the loader position (JSON), written
  asynchronously every ``checkpoint_every_steps``, at each evaluation and at the
  end; a re-run with the same ``workdir`` resumes exactly. SIGTERM / multi-host
  preemption saves and stops (``vheat_jax.train.preemption``).
* Metrics to TensorBoard and ``metrics.jsonl`` (``vheat_jax.train.metrics``); COCO
  box / mask mAP through pycocotools at every evaluation (process 0).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from vheat_jax.arch import Arch
from vheat_jax.det import checkpoint as det_checkpoint
from vheat_jax.det import detector, training
from vheat_jax.det.config import MaskRCNNConfig, RPNTestConfig, SamplerConfig, TrainConfig
from vheat_jax.det.data import CocoSource, DetLoader
from vheat_jax.det.evaluate import run_coco_eval
from vheat_jax.det.model import MaskRCNN
from vheat_jax.train import distributed, sharding
from vheat_jax.train import metrics as metrics_lib
from vheat_jax.train.preemption import PreemptionWatcher
from vheat_jax.variants import VARIANTS


class TrainingDivergedError(RuntimeError):
    """The loss or the gradient norm became NaN or infinite."""


def build_model(config) -> tuple[MaskRCNN, MaskRCNNConfig, Arch]:
    variant = dict(VARIANTS[config.model.backbone])
    for name in ("dims", "depths", "post_norm", "layer_scale"):
        if name in config.model:
            variant[name] = config.model[name]
    arch = Arch(dims=int(variant["dims"]), depths=tuple(variant["depths"]), post_norm=bool(variant["post_norm"]),
                layer_scale=variant["layer_scale"], img_size=int(config.model.img_size), num_classes=None)
    det = MaskRCNNConfig(
        num_classes=config.model.num_classes, fpn_channels=config.model.fpn_channels,
        rpn_feat_channels=config.model.rpn_feat_channels, fc_channels=config.model.fc_channels,
        mask_channels=config.model.mask_channels,
        train=TrainConfig(
            rpn_proposal=RPNTestConfig(nms_pre=config.rpn_proposal_nms_pre,
                                       max_per_img=config.rpn_proposal_max_per_img, iou_threshold=0.7),
            rcnn_sampler=SamplerConfig(config.rcnn_sampler_num, 0.25, True), max_gt=config.max_gt))
    det = det.replace(rpn_test=RPNTestConfig(nms_pre=config.rpn_test_nms_pre, max_per_img=config.rpn_test_max_per_img))
    model = MaskRCNN(det, arch, drop_path_rate=config.model.drop_path_rate, remat=config.remat)
    return model, det, arch


def make_source(config, workdir: Path, split: str, train: bool):
    if config.dataset == "shapes":
        from vheat_jax.det.demo import make_shapes_dataset

        root = Path(config.data_dir or workdir / "data" / "shapes")
        if jax.process_index() == 0:
            make_shapes_dataset(root, **dict(config.get("shapes", {})))
        return CocoSource(root, split, train=train, min_size=1)
    if config.dataset == "coco":
        if not config.data_dir:
            raise ValueError("config.data_dir is required for dataset='coco' (a COCO root with annotations/)")
        return CocoSource(config.data_dir, split, train=train)
    raise ValueError(f"dataset {config.dataset!r}: the trainer reads 'coco' or 'shapes' "
                     "(TfdsCocoSource serves evaluation and custom loops)")


class DetCheckpointer:
    """Orbax manager with the train state and each process's loader position (JSON)."""

    def __init__(self, directory: Path, keep: int):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True,
                                               cleanup_tmp_directories=True, create=True)
        self._manager = ocp.CheckpointManager(directory.absolute(), item_names=("state", "data"), options=options)
        self._data_key = f"process_{jax.process_index()}"

    def latest_step(self):
        return self._manager.latest_step()

    def save(self, step: int, state, loader: DetLoader) -> None:
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave({self._data_key: loader.get_state()})),
            force=True)

    def restore(self, step: int, abstract_state, loader: DetLoader):
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        loader.set_state(restored.data[self._data_key])
        return restored.state

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _check_finite(step: int, scalars: dict[str, float]) -> None:
    bad = [n for n in ("loss", "grad_norm") if not math.isfinite(scalars[n])]
    if bad:
        raise TrainingDivergedError(f"training diverged at step {step}: " + ", ".join(f"{n} = {scalars[n]}" for n in bad)
                                    + "; the last checkpoint is the last good state")


def progress_line(step: int, total: int, scalars: dict[str, float]) -> str:
    parts = [f"step {step}/{total}", f"loss {scalars['loss']:.4f}"]
    parts += [f"{k[5:]} {scalars[k]:.3f}" for k in ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox",
                                                    "loss_mask") if k in scalars]
    parts += [f"lr {scalars['learning_rate']:.3g}", f"|grad| {scalars['grad_norm']:.3g}"]
    if "step_time_s" in scalars:
        parts += [f"{scalars['images_per_s']:.1f} img/s", f"ETA {metrics_lib.format_duration((total - step) * scalars['step_time_s'])}"]
    return " | ".join(parts)


def train_and_evaluate(config, workdir: str | Path) -> dict[str, Any]:
    """Trains (resuming from ``workdir`` when it holds checkpoints), evaluates COCO mAP, returns final metrics."""
    workdir = Path(workdir).absolute()
    multiprocess = distributed.maybe_initialize(config.distributed)
    is_process0 = jax.process_index() == 0
    mesh = sharding.make_mesh()
    if config.global_batch_size % mesh.size or config.global_batch_size % config.loss_group_size:
        raise ValueError(f"global_batch_size {config.global_batch_size} must be a multiple of the device count "
                         f"({mesh.size}) and of loss_group_size ({config.loss_group_size})")
    train_source = make_source(config, workdir, config.train_split, train=True)
    eval_source = make_source(config, workdir, config.eval_split, train=False)
    loader = DetLoader(train_source, global_batch=config.global_batch_size, scales=config.train_scales,
                       max_gt=config.max_gt, seed=config.seed, process_index=jax.process_index(),
                       process_count=jax.process_count(), num_threads=config.num_workers,
                       flip_prob=config.flip_prob)
    steps_per_epoch = max(loader.steps_per_epoch(), 1)
    total_steps = config.num_steps or int(round(config.num_epochs * steps_per_epoch))
    eval_every = max(1, int(round(config.eval_every_epochs * steps_per_epoch)))

    model, det_config, arch = build_model(config)
    if det_config.num_classes != len(train_source.classes):
        raise ValueError(f"config.model.num_classes = {det_config.num_classes}, the data set has "
                         f"{len(train_source.classes)} classes")
    params = training.init_params(model, jax.random.key(config.seed))
    if config.init_from_mmdet:
        _, _, params, _ = det_checkpoint.read_mmdet_checkpoint(config.init_from_mmdet, config=det_config)
    elif config.init_backbone_from:
        params, fresh = training.backbone_from_pretrained(params, config.init_backbone_from,
                                                          ema=config.init_backbone_ema)
        logging.info("backbone from %s (kept fresh: %s)", config.init_backbone_from, ", ".join(fresh) or "none")
    tx, schedule = training.create_optimizer(config.optimizer, det_config, arch, params,
                                             steps_per_epoch=steps_per_epoch)
    replicated = NamedSharding(mesh, PartitionSpec())
    data_sharding = sharding.batch_sharding(mesh)
    train_step = jax.jit(
        training.make_train_step(model, tx, schedule, seed=config.seed, group_size=config.loss_group_size),
        in_shardings=(replicated, data_sharding), out_shardings=(replicated, replicated), donate_argnums=(0,))
    predict = jax.jit(lambda p, x, hw: detector.predict(model, {"params": p}, x, hw))

    checkpointer = DetCheckpointer(workdir / "checkpoints", config.keep_checkpoints)
    abstract = jax.eval_shape(lambda p: training.new_state(p, tx), params)
    latest = checkpointer.latest_step()
    if latest is not None:
        logging.info("resuming from step %d in %s", latest, workdir / "checkpoints")
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract)
        state = checkpointer.restore(latest, abstract, loader)
    else:
        state = jax.jit(lambda p: training.new_state(p, tx), out_shardings=replicated)(params)
    step = int(jax.device_get(state.step))

    writer = metrics_lib.MetricWriter(workdir, enabled=is_process0)
    watcher = PreemptionWatcher(multiprocess)
    window = metrics_lib.WindowAverage()
    timer = metrics_lib.StepTimer(config.global_batch_size, mesh.size)
    if is_process0:
        logging.info("Mask R-CNN %s: %.2fM params, %d devices, %d images/step, %d steps/epoch, %d steps",
                     config.model.backbone, sum(x.size for x in jax.tree.leaves(params)) / 1e6, mesh.size,
                     config.global_batch_size, steps_per_epoch, total_steps)

    def evaluate_now() -> dict[str, float]:
        if not is_process0:
            return {}
        t0 = time.perf_counter()
        host_params = jax.device_get(state.params)
        metrics, _ = run_coco_eval(lambda x, hw: jax.device_get(predict(host_params, x, hw)), eval_source,
                                   scale=config.test_scale, max_images=config.eval_max_images)
        metrics["eval_seconds"] = time.perf_counter() - t0
        return metrics

    def record(done: int, device_metrics) -> None:
        scalars = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
        _check_finite(done, scalars)
        timer.mark(done)
        window.add(scalars)
        if done % config.log_every_steps == 0 or done == total_steps:
            logged = {**window.pop(), **timer.pop(), "epoch": done / steps_per_epoch}
            writer.write(done, {f"train/{k}": v for k, v in logged.items()})
            if is_process0:
                logging.info("%s", progress_line(done, total_steps, logged))

    final: dict[str, Any] = {"step": step, "preempted": False}
    pending = None
    train_start = time.perf_counter()
    try:
        while step < total_steps:
            batch = sharding.global_batch(next(loader), mesh)
            state, step_metrics = train_step(state, batch)
            step += 1
            if pending is not None:
                record(*pending)
            pending = (step, step_metrics)
            preempted = watcher.should_stop(step)
            eval_due = (step % eval_every == 0 or step == total_steps) and not preempted
            save_due = eval_due or preempted or step % config.checkpoint_every_steps == 0 or step == total_steps
            if not save_due:
                continue
            record(*pending)
            pending = None
            if eval_due:
                eval_metrics = evaluate_now()
                if eval_metrics:
                    writer.write(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
                    logging.info("eval at step %d: box mAP %.4f (AP50 %.4f) | mask mAP %.4f (AP50 %.4f)", step,
                                 eval_metrics["bbox_mAP"], eval_metrics["bbox_mAP_50"], eval_metrics["segm_mAP"],
                                 eval_metrics["segm_mAP_50"])
                    final.update(eval_metrics)
                timer.reset()
            checkpointer.save(step, state, loader)
            if preempted:
                final["preempted"] = True
                break
        if pending is not None:
            record(*pending)
    finally:
        checkpointer.close()
        writer.close()
        watcher.close()
    final["step"] = step
    final["train_seconds"] = time.perf_counter() - train_start
    final["params"] = jax.device_get(state.params)
    final["det_config"], final["arch"] = det_config, arch
    return final


def export(final: dict[str, Any], path: str | Path, classes=None) -> None:
    """Writes the trained detector as an mmdetection checkpoint."""
    det_checkpoint.export_mmdet(final["params"], final["det_config"], final["arch"], path, classes=classes)


__all__ = ["TrainingDivergedError", "build_model", "export", "train_and_evaluate"]
