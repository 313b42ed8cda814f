"""Classification on the shared loop: vHeat, soft-target cross-entropy, AdamW + EMA, top-1/top-5.

The task (:class:`ClassificationTask`, ``config.task = "classification"``) supplies to
:mod:`vheat_jax.train.loop`: the grain image pipeline (:mod:`vheat_jax.cls.data`: image
folder, TFDS or the digits demo), the model, its :class:`~vheat_jax.cls.training.TrainState`
and train step (:mod:`vheat_jax.cls.training`), evaluation of the raw and EMA parameters
(top-1/top-5, the best checkpoint by EMA top-1), and ``init_from`` (a converted or official
checkpoint; the classifier is re-initialised when the class count differs:
:mod:`vheat_jax.cls.pretrained`).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from vheat_jax import paths
from vheat_jax.cls import optim
from vheat_jax.cls.data import create_eval_loader, create_train_loader
from vheat_jax.cls.sources import make_source
from vheat_jax.cls.training import StateFactory, TrainState, build_model, config_train_step, jit_eval_step
from vheat_jax.errors import ConfigError, DataReadError
from vheat_jax.train import loop, sharding
from vheat_jax.train.streams import iterating


def data_config(config, workdir: Path) -> ml_collections.ConfigDict:
    """The config the input pipeline sees: its batch is one micro-batch (one per accumulation step)."""
    data = config.copy_and_resolve_references()
    data.global_batch_size = config.global_batch_size // config.grad_accum_steps
    if data.dataset == "digits" and not data.data_dir:
        # Written once by each host; a gs:// workdir keeps it on the local disk instead.
        local = Path.home() / ".cache" / "vheat_jax" if paths.is_remote(workdir) else Path(workdir)
        data.data_dir = str(local / "data" / "digits")
    if data.dataset == "imagefolder" and not data.data_dir:
        raise ConfigError("config.data_dir is required for dataset='imagefolder' (a folder with train/ and val/)")
    return data


def check_batch_sizes(config, num_devices: int, num_processes: int) -> None:
    micro, remainder = divmod(config.global_batch_size, config.grad_accum_steps)
    if remainder:
        raise ConfigError(
            f"global_batch_size={config.global_batch_size} is not a multiple of "
            f"grad_accum_steps={config.grad_accum_steps}"
        )
    for what, size in (("global_batch_size / grad_accum_steps", micro), ("eval_batch_size", config.eval_batch_size)):
        if size % num_devices or size % num_processes:
            raise ConfigError(
                f"{what} = {size} must be a multiple of the number of devices ({num_devices}) "
                f"and of processes ({num_processes})"
            )


# --------------------------------------------------------------------------- task


class UndecodableCount:
    """The training images that could not be decoded, counted per epoch from each update's ``undecodable``.

    Reported once per epoch; the run stops (one line, exit 1) as soon as an epoch's count passes
    ``max_fraction`` of the epoch, or when none of the images read so far decoded: a folder of
    empty files must not train to the end on nothing.
    """

    def __init__(self, max_fraction: float, steps_per_epoch: int, global_batch: int):
        self.max_fraction, self.steps_per_epoch, self.global_batch = max_fraction, steps_per_epoch, global_batch
        self.bad = self.read = 0

    def add(self, step: int, bad: float) -> None:
        self.bad += round(bad)
        self.read += self.global_batch
        epoch = (step - 1) // self.steps_per_epoch + 1
        epoch_images = self.steps_per_epoch * self.global_batch
        if self.bad > self.max_fraction * epoch_images or (self.bad and self.bad == self.read):
            raise DataReadError(
                f"{self.bad} of the {self.read} training images read in epoch {epoch} could not be decoded, "
                f"more than config.max_undecodable_fraction = {self.max_fraction} of the epoch's {epoch_images} "
                "allows; check the image files (empty or truncated ones: find DATA_DIR -size 0), or raise the "
                "fraction")
        if step % self.steps_per_epoch == 0:
            if self.bad:
                logging.warning("epoch %d: %d of %d training images could not be decoded (skipped)", epoch,
                                self.bad, self.read)
            self.bad = self.read = 0


def check_undecodable_eval(bad: int, total: int, max_fraction: float) -> None:
    """The evaluation's counterpart of :class:`UndecodableCount`, over the whole split."""
    if bad > max_fraction * total or (total and bad == total):
        raise DataReadError(f"{bad} of the {total} evaluation images could not be decoded, more than "
                            f"config.max_undecodable_fraction = {max_fraction} allows; check the image files "
                            "(empty or truncated ones: find DATA_DIR -size 0), or raise the fraction")
    if bad:
        logging.warning("evaluation: %d of %d images could not be decoded (left out)", bad, total)


class ClassificationTask(loop.Task):
    best_metric = "ema_top1"

    def prepare_data(self) -> int:
        config = self.config
        check_batch_sizes(config, self.mesh.size, jax.process_count())
        self.data_cfg = data_config(config, self.workdir)
        num_train = len(make_source(self.data_cfg, self.data_cfg.train_split))
        steps_per_epoch = num_train // config.global_batch_size
        if steps_per_epoch < 1:
            raise ConfigError(
                f"the training split has {num_train} images, fewer than one global batch "
                f"({config.global_batch_size}); lower config.global_batch_size"
            )
        self.micro_steps = config.grad_accum_steps
        self.num_eval = len(make_source(self.data_cfg, self.data_cfg.eval_split))
        self.undecodable = UndecodableCount(config.max_undecodable_fraction, steps_per_epoch,
                                            config.global_batch_size)
        return steps_per_epoch

    def build(self):
        config = self.config
        self.model = build_model(config)
        self.name = config.model.name
        tx, schedule = optim.create_optimizer(
            config.optimizer,
            global_batch_size=config.global_batch_size,
            warmup_steps=loop.resolve_steps(config, "warmup", self.run.steps_per_epoch),
            total_steps=self.run.total_steps,
            grad_accum_steps=config.grad_accum_steps,
        )
        self.factory = StateFactory(self.model, tx, self.mesh, config)
        self._train_step = config_train_step(config, self.model, tx, schedule)
        self._eval_step = jit_eval_step(self.model, self.mesh, self.factory.shardings.params)
        return self.factory.abstract

    def initial_state(self, shardings) -> TrainState:
        del shardings  # the factory's, from the same abstract state and config.fsdp
        if self.config.init_from:
            return self.factory.from_pretrained(self.config.init_from, ema=self.config.init_from_ema)
        return self.factory.fresh()

    def train_step(self, state, batch):
        return self._train_step(state, batch)

    def train_loader(self):
        return iter(create_train_loader(
            self.data_cfg, process_index=jax.process_index(), process_count=jax.process_count(), seed=self.config.seed
        ))

    def evaluate(self, state: TrainState) -> dict[str, float]:
        """Top-1/top-5 (percent) and mean loss of raw and EMA params over the whole eval split."""
        loader = create_eval_loader(self.data_cfg, process_index=jax.process_index(),
                                    process_count=jax.process_count())
        totals = None
        with iterating(loader) as batches:
            for local_batch in batches:
                batch_sums = self._eval_step(state.params, state.ema_params,
                                             sharding.global_batch(local_batch, self.mesh))
                totals = batch_sums if totals is None else jax.tree.map(jnp.add, totals, batch_sums)
        totals = {k: float(v) for k, v in jax.device_get(totals).items()}
        check_undecodable_eval(self.num_eval - int(totals["num_examples"]), self.num_eval,
                               self.config.max_undecodable_fraction)
        count = max(totals["num_examples"], 1.0)
        out = {"num_examples": totals["num_examples"]}
        for prefix in ("", "ema_"):
            out[f"{prefix}top1"] = 100.0 * totals[f"{prefix}top1"] / count
            out[f"{prefix}top5"] = 100.0 * totals[f"{prefix}top5"] / count
            out[f"{prefix}loss"] = totals[f"{prefix}loss"] / count
        return out

    def after_update(self, step: int, scalars: dict[str, float]) -> None:
        self.undecodable.add(step, scalars["undecodable"] * self.micro_steps)

    def eval_summary(self, m: dict[str, float]) -> str:
        return (f"top-1 {m['top1']:.2f}% top-5 {m['top5']:.2f}% loss {m['loss']:.4f} | "
                f"EMA top-1 {m['ema_top1']:.2f}% top-5 {m['ema_top5']:.2f}% | {int(m['num_examples'])} images")

    def progress_fields(self, scalars: dict[str, float]) -> list[str]:
        return [f"train top-1 {scalars['top1']:.1f}%"]
