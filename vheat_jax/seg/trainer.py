"""``train_and_evaluate``: UperNet-vHeat training as mmseg runs it, sharded like the classification trainer.

One step: each process loads its slice of the global batch (grain), the slices are
assembled into arrays split over the ``data`` mesh axis, and the jitted step runs
forward and backward, updates the BatchNorm statistics and applies AdamW. BatchNorm
statistics are those of the global batch (the mean over the sharded batch axis is a
global reduction), i.e. mmseg's ``SyncBN``. The loss is mmseg's: cross-entropy of
the decode logits resized (bilinear) to the label size, averaged over all pixels
(``avg_non_ignore=False``: ignored pixels count in the denominator), plus
``aux_loss_weight`` times the same for the auxiliary head.

Evaluation (every ``eval_every_steps`` and at the end) runs mmseg's test pipeline
(:class:`~vheat_jax.seg.inference.Segmenter`) on each process's share of the split and
sums the IoU histograms over processes. Checkpoints (Orbax, with the data-iterator
position) come from :class:`vheat_jax.train.checkpointing.Checkpointer`: written every
``checkpoint_every_steps``, at each evaluation, at the end and on preemption; a re-run
with the same ``workdir`` resumes. The final weights are also exported as an mmseg
checkpoint, ``workdir/upernet_mmseg.pth``.
"""

from __future__ import annotations

import functools
import logging as std_logging
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import struct
from jax.experimental import multihost_utils

from vheat_jax.seg.convert import bn_prefixes, export_mmseg, key_table
from vheat_jax.seg.evaluation import evaluate, inference_config
from vheat_jax.seg.inference import Segmenter
from vheat_jax.seg.metrics import IGNORE_INDEX
from vheat_jax.seg.model import UperNet, UperNetConfig, upernet_config
from vheat_jax.seg.optim import create_optimizer
from vheat_jax.seg.pipeline import create_seg_train_loader
from vheat_jax.seg.pretrained import initial_variables
from vheat_jax.seg.resample import resize_bilinear
from vheat_jax.train import distributed, sharding
from vheat_jax.train import metrics as metrics_lib
from vheat_jax.train.checkpointing import Checkpointer
from vheat_jax.train.preemption import PreemptionWatcher
from vheat_jax.train.trainer import TrainingDivergedError, compute_dtype


@struct.dataclass
class SegTrainState:
    step: jax.Array  # int32: optimizer updates applied
    params: Any
    batch_stats: Any  # BatchNorm running statistics
    opt_state: Any


def model_config(config) -> UperNetConfig:
    m = config.model
    overrides = dict(m.backbone_overrides)
    if "depths" in overrides:
        overrides["depths"] = tuple(overrides["depths"])
    cfg = upernet_config(m.variant, num_classes=config.num_classes, img_size=m.img_size, channels=m.channels,
                         aux_channels=m.aux_channels, pool_scales=tuple(m.pool_scales), dropout_ratio=m.dropout_ratio)
    return cfg.replace(backbone=cfg.backbone.replace(**overrides))


def build_model(config) -> tuple[UperNetConfig, UperNet]:
    cfg = model_config(config)
    return cfg, cfg.build(drop_path_rate=config.model.drop_path_rate, dtype=compute_dtype(config.compute_dtype),
                          remat=config.remat)


# --------------------------------------------------------------------------- loss and step


def seg_cross_entropy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """mmseg ``CrossEntropyLoss`` (``avg_non_ignore=False``): ``(mean over all pixels, resized logits)``;
    the logits are resized bilinearly to the labels first, ignored pixels add 0 but count."""
    logits = resize_bilinear(logits.astype(jnp.float32), labels.shape[1:3])
    valid = labels != IGNORE_INDEX
    per_pixel = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
    return jnp.mean(per_pixel * valid), logits


def make_train_step(model: UperNet, tx, schedule, *, aux_weight: float, seed: int):
    """``train_step(state, batch) -> (state, metrics)``; randomness is a function of (seed, step)."""
    base_key = jax.random.key(seed)

    def train_step(state: SegTrainState, batch):
        def loss_fn(params):
            (decode, aux), updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True,
                rngs={"dropout": jax.random.fold_in(base_key, state.step)}, mutable=["batch_stats"])
            decode_loss, decode_logits = seg_cross_entropy(decode, batch["label"])
            aux_loss, _ = seg_cross_entropy(aux, batch["label"])
            loss = decode_loss + aux_weight * aux_loss
            return loss, (updates["batch_stats"], decode_loss, aux_loss, decode_logits)

        (loss, (batch_stats, decode_loss, aux_loss, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        valid = batch["label"] != IGNORE_INDEX
        correct = (jnp.argmax(logits, -1) == batch["label"]) & valid
        metrics = {"loss": loss, "decode_loss": decode_loss, "aux_loss": aux_loss,
                   "acc_seg": 100.0 * jnp.sum(correct) / jnp.maximum(jnp.sum(valid), 1),
                   "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state.step)}
        new_state = SegTrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                  batch_stats=batch_stats, opt_state=opt_state)
        return new_state, metrics

    return train_step


# --------------------------------------------------------------------------- evaluation


def host_variables(state: SegTrainState) -> dict:
    """The model variables as host arrays on every process (gathered when sharded across processes)."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    if jax.process_count() == 1:
        return jax.device_get(variables)
    return multihost_utils.process_allgather(variables, tiled=True)


# --------------------------------------------------------------------------- state


def state_builders(config, model: UperNet, tx):
    """``(init(rng) -> variables, new_state(variables) -> SegTrainState)``."""
    crop = tuple(config.aug.crop_size)
    init = functools.partial(model.init, images=jnp.zeros((1, *crop, 3)), train=False)

    def new_state(variables):
        return SegTrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                             batch_stats=variables["batch_stats"], opt_state=tx.init(variables["params"]))

    return init, new_state


def restore_variables(config, workdir: str | Path) -> tuple[UperNet, dict]:
    """``(model, variables)`` of the latest checkpoint in a training ``workdir`` (on the first device)."""
    cfg, model = build_model(config)
    tx, _ = create_optimizer(config.optimizer, cfg, config.num_steps)
    init, new_state = state_builders(config, model, tx)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                            jax.eval_shape(lambda r: new_state(init(r)), jax.random.key(0)))
    manager = ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints", item_names=("state", "data"))
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {Path(workdir) / 'checkpoints'}")
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))).state
    manager.close()
    logging.info("restored step %d from %s", step, workdir)
    return cfg.build(), {"params": state.params, "batch_stats": state.batch_stats}


# --------------------------------------------------------------------------- loop


def _check_finite(step: int, scalars: dict[str, float]) -> None:
    bad = [name for name in ("loss", "grad_norm") if not math.isfinite(scalars[name])]
    if bad:
        raise TrainingDivergedError(f"training diverged: {', '.join(f'{n} = {scalars[n]}' for n in bad)} at step "
                                    f"{step}; the last checkpoint is the last good state")


def progress_line(step: int, total: int, scalars: dict[str, float]) -> str:
    parts = [f"step {step}/{total}", (f"loss {scalars['loss']:.4f} (decode {scalars['decode_loss']:.4f}, "
             f"aux {scalars['aux_loss']:.4f})"), f"acc {scalars['acc_seg']:.1f}%",
             f"lr {scalars['learning_rate']:.3g}", f"|grad| {scalars['grad_norm']:.3g}"]
    if "step_time_s" in scalars:
        parts += [f"{scalars['images_per_s']:.1f} img/s", f"ETA {metrics_lib.format_duration((total - step) * scalars['step_time_s'])}"]
    return " | ".join(parts)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Trains (resuming from ``workdir`` if it holds checkpoints), evaluates; returns the final metrics."""
    std_logging.getLogger("vheat_jax").setLevel(std_logging.INFO)
    workdir = Path(workdir).absolute()
    multiprocess = distributed.maybe_initialize(config.distributed)
    is_process0 = jax.process_index() == 0
    mesh = sharding.make_mesh()
    if config.global_batch_size % mesh.size:
        raise ValueError(f"global_batch_size={config.global_batch_size} must be a multiple of the {mesh.size} devices")

    cfg, model = build_model(config)
    tx, schedule = create_optimizer(config.optimizer, cfg, config.num_steps)
    rng = jax.random.key(config.seed)
    init, new_state = state_builders(config, model, tx)
    abstract = jax.eval_shape(lambda r: new_state(init(r)), rng)
    shardings = sharding.state_shardings(abstract, mesh, config.fsdp)

    train_step = jax.jit(make_train_step(model, tx, schedule, aux_weight=config.aux_loss_weight, seed=config.seed),
                         in_shardings=(shardings, sharding.batch_sharding(mesh)),
                         out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=(0,))
    train_iter = iter(create_seg_train_loader(config, process_index=jax.process_index(),
                                              process_count=jax.process_count()))
    checkpointer = Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    latest = checkpointer.latest_step()
    if latest is not None:
        logging.info("resuming from the checkpoint at step %d", latest)
        abstract_sharded = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                        abstract, shardings)
        state = checkpointer.restore(latest, abstract_sharded, train_iter)
    elif config.init_from:
        fresh = jax.device_get(jax.jit(init)(rng))
        variables = initial_variables(config.init_from, cfg, fresh, ema=config.init_from_ema,
                                      method=config.init_adapt_method, post_norm=config.init_post_norm)
        state = jax.jit(new_state, out_shardings=shardings)(jax.device_put(variables))
    else:
        state = jax.jit(lambda r: new_state(init(r)), out_shardings=shardings)(rng)
    step = int(jax.device_get(state.step))
    segmenter = Segmenter(model, host_variables(state), inference_config(config))

    writer = metrics_lib.MetricWriter(workdir, enabled=is_process0)
    watcher = PreemptionWatcher(multiprocess)
    window, timer = metrics_lib.WindowAverage(), metrics_lib.StepTimer(config.global_batch_size, mesh.size)
    if is_process0:
        num_params = sum(x.size for x in jax.tree.leaves(abstract.params))
        logging.info("UperNet-%s: %.2fM params, %d devices (%d processes), batch %d, %d steps",
                     config.model.variant, num_params / 1e6, mesh.size, jax.process_count(),
                     config.global_batch_size, config.num_steps)

    def record(done_step: int, device_metrics) -> None:
        scalars = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
        _check_finite(done_step, scalars)
        timer.mark(done_step)
        window.add(scalars)
        if done_step % config.log_every_steps == 0 or done_step == config.num_steps:
            logged = {**window.pop(), **timer.pop()}
            writer.write(done_step, {f"train/{k}": v for k, v in logged.items()})
            if is_process0:
                logging.info("%s", progress_line(done_step, config.num_steps, logged))

    final: dict[str, Any] = {"step": step, "preempted": False}
    pending = None
    try:
        while step < config.num_steps:
            state, step_metrics = train_step(state, sharding.global_batch(next(train_iter), mesh))
            step += 1
            if pending is not None:
                record(*pending)
            pending = (step, step_metrics)
            preempted = watcher.should_stop(step)
            eval_due = (step % config.eval_every_steps == 0 or step == config.num_steps) and not preempted
            if not (eval_due or preempted or step % config.checkpoint_every_steps == 0 or step == config.num_steps):
                continue
            record(*pending)
            pending = None
            if eval_due:
                segmenter.set_variables(host_variables(state))
                results = evaluate(segmenter, config)
                writer.write(step, {f"eval/{k}": v for k, v in results.items()})
                if is_process0:
                    logging.info("eval at step %d: mIoU %.2f  mAcc %.2f  aAcc %.2f  (%d images, %.1fs)", step,
                                 results["mIoU"], results["mAcc"], results["aAcc"], results["num_images"],
                                 results["seconds"])
                final.update(results)
            checkpointer.save(step, state, train_iter)
            timer.reset()
            if preempted:
                logging.warning("preempted: saved the checkpoint at step %d; exiting", step)
                final["preempted"] = True
                break
        final["step"] = step
        if step == config.num_steps:
            variables = host_variables(state)  # a collective when several processes: every process calls it
            if is_process0:
                # BatchNorm's counter in torch counts training forward passes: one per step here.
                counters = {f"{prefix}.num_batches_tracked": step for prefix in bn_prefixes(key_table(cfg))}
                export_mmseg(workdir / "upernet_mmseg.pth", cfg, variables, num_batches_tracked=counters,
                             test_cfg={"mode": config.test.mode, "crop_size": tuple(config.test.crop_size),
                                           "stride": tuple(config.test.stride)})
        return final
    finally:
        checkpointer.close()
        watcher.close()
        writer.close()
