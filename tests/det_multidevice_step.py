"""Not a test module itself: run by tests/test_det_train.py in a subprocess with 8 forced host devices: one detection training step
on an 8-device mesh (batch sharded) and on a 1-device mesh; prints the largest differences as JSON."""

import json
import sys

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from vheat_jax.arch import Arch
from vheat_jax.det import training
from vheat_jax.det.model import MaskRCNN
from vheat_jax.det.model_config import MaskRCNNConfig, RPNTestConfig, SamplerConfig, TrainConfig
from vheat_jax.train import sharding


def synthetic_batch(batch_size=8, height=64, width=96, max_gt=4, seed=0):
    rng = np.random.default_rng(seed)
    boxes = np.zeros((batch_size, max_gt, 4), np.float32)
    masks = np.zeros((batch_size, max_gt, height, width), np.uint8)
    valid = np.zeros((batch_size, max_gt), bool)
    img_hw = np.zeros((batch_size, 2), np.float32)
    for b in range(batch_size):
        img_h, img_w = int(rng.integers(40, height + 1)), int(rng.integers(60, width + 1))
        img_hw[b] = img_h, img_w
        for g in range(int(rng.integers(1, max_gt + 1))):
            x1, y1 = rng.uniform(0, img_w - 12), rng.uniform(0, img_h - 12)
            x2, y2 = min(x1 + rng.uniform(8, 40), img_w), min(y1 + rng.uniform(8, 40), img_h)
            boxes[b, g] = x1, y1, x2, y2
            masks[b, g, int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))] = 1
            valid[b, g] = True
    return dict(image=rng.normal(size=(batch_size, height, width, 3)).astype(np.float32), img_hw=img_hw,
                gt_boxes=boxes, gt_labels=rng.integers(0, 3, (batch_size, max_gt)).astype(np.int32),
                gt_valid=valid, gt_masks=masks, image_valid=np.ones(batch_size, bool))


def main():
    arch = Arch(dims=8, depths=(1, 1, 1, 1), post_norm=False, layer_scale=None, img_size=64, num_classes=None)
    config = MaskRCNNConfig(
        num_classes=3, fpn_channels=16, rpn_feat_channels=16, fc_channels=32, mask_channels=16,
        train=TrainConfig(rcnn_sampler=SamplerConfig(64, 0.25, True), rpn_proposal=RPNTestConfig(300, 100, 0.7),
                          max_gt=4))
    model = MaskRCNN(config, arch, drop_path_rate=0.1)
    params = training.init_params(model, jax.random.key(0))
    opt = ml_collections.ConfigDict(dict(lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05, warmup_iters=1,
                                         warmup_factor=1.0, milestones_epochs=[], gamma=0.1, grad_clip_norm=0.0))
    tx, schedule = training.create_optimizer(opt, config, arch, params, steps_per_epoch=10)
    step_fn = training.make_train_step(model, tx, schedule, seed=0, group_size=2)
    batch = synthetic_batch()
    runs = {}
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = sharding.make_mesh(devices)
        replicated = NamedSharding(mesh, PartitionSpec())
        data = NamedSharding(mesh, PartitionSpec(sharding.DATA_AXIS))
        state = jax.device_put(training.new_state(params, tx), replicated)
        sharded = {k: jax.device_put(v, data) for k, v in batch.items()}
        step = jax.jit(step_fn, in_shardings=(replicated, data), out_shardings=(replicated, replicated))
        runs[len(devices)] = (step.lower(state, sharded), state, sharded)
    results = {}
    for count, (lowered, state, sharded) in runs.items():
        new_state, metrics = lowered.compile()(state, sharded)
        results[count] = jax.device_get((new_state.params, metrics))
    (p1, m1), (p8, m8) = results[1], results[len(jax.devices())]
    update1 = jax.tree.map(lambda new, old: np.asarray(new) - np.asarray(old), p1, params)
    update8 = jax.tree.map(lambda new, old: np.asarray(new) - np.asarray(old), p8, params)
    diffs = np.concatenate([np.abs(a - b).ravel() for a, b in zip(jax.tree.leaves(update1), jax.tree.leaves(update8))])
    out = {
        "devices": len(jax.devices()),
        "metrics_1": {k: float(v) for k, v in m1.items()},
        "metrics_8": {k: float(v) for k, v in m8.items()},
        "update_max_abs_diff": float(diffs.max()),
        "update_frac_diff_above_1e-6": float(np.mean(diffs > 1e-6)),
        "update_max_abs": float(max(np.abs(u).max() for u in jax.tree.leaves(update1))),
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
