"""Segmentation on the shared loop: UperNet-vHeat trained as mmseg trains it.

:class:`SegmentationTask` (``config.task = "segmentation"``) supplies to
:mod:`vheat_jax.train.loop` the grain stream of augmented crops
(:mod:`vheat_jax.seg.data`), the UperNet state with BatchNorm statistics, mmseg's
loss (:mod:`vheat_jax.seg.training`), evaluation with mmseg's test pipeline on each
process's share of the split (IoU histograms summed over processes; best checkpoint by
mIoU), and ``init_from`` (an ImageNet checkpoint for the backbone, or a whole mmseg
UperNet ``.pth``). A finished run also writes ``workdir/upernet_mmseg.pth``.
"""

from __future__ import annotations

import jax

from vheat_jax.errors import ConfigError
from vheat_jax.seg import training
from vheat_jax.seg.convert import bn_prefixes, export_mmseg, key_table
from vheat_jax.seg.data import create_seg_train_loader
from vheat_jax.seg.evaluation import evaluate, inference_config
from vheat_jax.seg.inference import Segmenter
from vheat_jax.seg.pretrained import initial_variables
from vheat_jax.seg.sources import make_seg_source
from vheat_jax.train import loop, sharding


class SegmentationTask(loop.Task):
    best_metric = "mIoU"

    def prepare_data(self) -> int:
        config = self.config
        if config.global_batch_size % self.mesh.size:
            raise ConfigError(f"global_batch_size={config.global_batch_size} must be a multiple of the "
                              f"{self.mesh.size} devices")
        return max(1, len(make_seg_source(config, config.train_split)) // config.global_batch_size)

    def build(self):
        config = self.config
        self.model_cfg, self.model = training.build_model(config)
        self.name = f"UperNet-{config.model.name}"
        tx, schedule, self._init, self._new_state, abstract = training.abstract_state(
            config, self.model, self.run.total_steps)
        self._train_step = training.make_train_step(self.model, tx, schedule, aux_weight=config.aux_loss_weight,
                                                    seed=config.seed)
        self._segmenter = None
        return abstract

    def initial_state(self, shardings):
        config = self.config
        rng = jax.random.key(config.seed)
        if not config.init_from:
            return jax.jit(lambda r: self._new_state(self._init(r)), out_shardings=shardings)(rng)
        fresh = jax.device_get(jax.jit(self._init)(rng))
        variables = initial_variables(config.init_from, self.model_cfg, fresh, ema=config.init_from_ema,
                                      method=config.init_adapt_method, post_norm=config.init_post_norm)
        return jax.jit(self._new_state, out_shardings=shardings)(jax.device_put(variables))

    def train_step(self, state, batch):
        return self._train_step(state, batch)

    def train_loader(self):
        return iter(create_seg_train_loader(self.config, process_index=jax.process_index(),
                                            process_count=jax.process_count()))

    def _variables(self, state) -> dict:
        # A collective when the state spans processes: every process calls it.
        return sharding.host_tree({"params": state.params, "batch_stats": state.batch_stats})

    def evaluate(self, state) -> dict[str, float]:
        variables = self._variables(state)
        if self._segmenter is None:
            self._segmenter = Segmenter(self.model, variables, inference_config(self.config))
        else:
            self._segmenter.set_variables(variables)
        return evaluate(self._segmenter, self.config)

    def eval_summary(self, m: dict[str, float]) -> str:
        return (f"mIoU {m['mIoU']:.2f}  mAcc {m['mAcc']:.2f}  aAcc {m['aAcc']:.2f}  "
                f"({m['num_images']} images, {m['seconds']:.1f}s)")

    def progress_fields(self, s: dict[str, float]) -> list[str]:
        return [f"decode {s['decode_loss']:.4f} aux {s['aux_loss']:.4f}", f"acc {s['acc_seg']:.1f}%"]

    def finish(self, state) -> dict:
        variables = self._variables(state)
        if jax.process_index() == 0:
            config = self.config
            step = int(jax.device_get(state.step))
            # BatchNorm's counter in torch counts training forward passes: one per step here.
            counters = {f"{prefix}.num_batches_tracked": step for prefix in bn_prefixes(key_table(self.model_cfg))}
            export_mmseg(self.workdir / "upernet_mmseg.pth", self.model_cfg, variables,
                         num_batches_tracked=counters,
                         test_cfg={"mode": config.test.mode, "crop_size": tuple(config.test.crop_size),
                                   "stride": tuple(config.test.stride)})
        return {}
