"""Training pieces: assigner, sampler, mask targets, schedule, weight-decay rule, and the 8-device step."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from det_reference import max_iou_assign_reference, roi_align_reference

from vheat_jax.arch import Arch
from vheat_jax.det import targets, training
from vheat_jax.det.model_config import AssignerConfig, MaskRCNNConfig, SamplerConfig

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("cfg", [AssignerConfig(0.7, 0.3, 0.3), AssignerConfig(0.5, 0.5, 0.5),
                                 AssignerConfig(0.7, 0.3, 0.3, match_low_quality=False)])
def test_max_iou_assigner(cfg):
    rng = np.random.default_rng(0)
    boxes = np.concatenate([rng.uniform(0, 60, (80, 2)), np.zeros((80, 2))], 1).astype(np.float32)
    boxes[:, 2:] = boxes[:, :2] + rng.uniform(4, 40, (80, 2))
    boxes[10] = boxes[11]  # exact duplicates tie for a GT's max
    gt = boxes[[3, 11, 40]] + np.float32([1, -1, 2, 1])
    valid = np.ones(80, bool)
    valid[70:] = False  # padding candidates take no part
    gt_pad = np.concatenate([gt, np.zeros((2, 4), np.float32)])
    gt_valid = np.array([True, True, True, False, False])
    got, _ = jax.jit(lambda *a: targets.max_iou_assign(*a, cfg))(boxes, valid, gt_pad, gt_valid)
    ref = max_iou_assign_reference(boxes[:70], gt, cfg.pos_iou_thr, cfg.neg_iou_thr, cfg.min_pos_iou,
                                   cfg.match_low_quality)
    np.testing.assert_array_equal(np.asarray(got)[:70], ref)
    assert (np.asarray(got)[70:] == -1).all()
    # no ground truth at all: every valid candidate is negative
    got, _ = targets.max_iou_assign(jnp.asarray(boxes), jnp.asarray(valid), jnp.asarray(gt_pad),
                                    jnp.zeros(5, bool), cfg)
    assert (np.asarray(got)[:70] == 0).all() and (np.asarray(got)[70:] == -1).all()


def test_random_sampler_counts_and_uniformity():
    cfg = SamplerConfig(num=16, pos_fraction=0.25, add_gt_as_proposals=False)
    assigned = np.full(100, -1)
    assigned[:10] = np.arange(1, 11)  # 10 positives
    assigned[10:60] = 0  # 50 negatives
    sample = jax.jit(lambda k: targets.random_sample(k, jnp.asarray(assigned), cfg))
    picks = np.zeros(100)
    for seed in range(200):
        index, is_pos, sampled = (np.asarray(x) for x in sample(jax.random.key(seed)))
        assert sampled.all() and is_pos.sum() == 4 and (assigned[index[is_pos]] > 0).all()
        assert (assigned[index[~is_pos]] == 0).all() and len(set(index.tolist())) == 16
        assert is_pos[:4].all()  # positives first
        picks[index] += 1
    assert picks[:10].min() > 40 and picks[:10].max() < 120  # 80 expected each
    assert picks[10:60].min() > 25 and picks[10:60].max() < 75  # 48 expected each
    # few positives: the negatives fill the rest; too few of either: the rest is padding
    assigned = np.full(20, -1)
    assigned[:2], assigned[2:7] = 1, 0
    index, is_pos, sampled = (np.asarray(x) for x in targets.random_sample(jax.random.key(0), jnp.asarray(assigned), cfg))
    assert is_pos.sum() == 2 and sampled.sum() == 7


def test_mask_targets_are_binarised_roi_align():
    rng = np.random.default_rng(0)
    masks = (rng.uniform(size=(3, 40, 50)) > 0.5).astype(np.uint8)
    rois = np.array([[3.2, 4.1, 30.7, 33.3], [-5, -5, 20, 20], [10, 0, 60, 45], [0, 0, 50, 40]], np.float32)
    gt_index = np.array([0, 1, 2, 1])
    got = np.asarray(targets.mask_targets(jnp.asarray(rois), jnp.asarray(gt_index), jnp.asarray(masks), 28))
    clipped = np.clip(rois, 0, [50, 40, 50, 40])
    for i in range(len(rois)):
        ref = roi_align_reference(masks[gt_index[i], :, :, None].astype(np.float64), clipped[i:i + 1], 1, 28)[0, ..., 0]
        near = np.abs(ref - 0.5) < 1e-5
        np.testing.assert_array_equal(got[i][~near], (ref >= 0.5)[~near])


def test_schedule_and_weight_decay_rule():
    schedule = training.warmup_multistep_schedule(1e-4, warmup_iters=1000, warmup_factor=0.001,
                                                  milestones=[8000, 11000], gamma=0.1)
    np.testing.assert_allclose([float(schedule(s)) for s in (0, 500, 999, 1000, 7999, 8000, 10999, 11000)],
                               [1e-7, 1e-4 * (0.001 + 0.999 * 0.5), 1e-4 * (0.001 + 0.999 * 0.999), 1e-4, 1e-4,
                                1e-5, 1e-5, 1e-6], rtol=1e-5)
    arch = Arch(dims=8, depths=(1, 1, 1, 1), post_norm=False, layer_scale=None, img_size=64, num_classes=None)
    config = MaskRCNNConfig(num_classes=2, fpn_channels=8, rpn_feat_channels=8, fc_channels=8, mask_channels=8)
    from vheat_jax.det.model import MaskRCNN
    params = jax.eval_shape(lambda: training.init_params(MaskRCNN(config, arch), jax.random.key(0)))
    mask = training.weight_decay_mask(params, config, arch)
    assert mask["backbone"]["layers_0"]["blocks_0"]["norm1"]["scale"] is False
    assert mask["backbone"]["outnorm_2"]["bias"] is False
    assert mask["backbone"]["patch_embed_norm1"]["scale"] is False
    # mmdetection's key for the downsampling LayerNorm is layers.0.1.1.weight: no "norm", decayed there too
    assert mask["backbone"]["layers_0"]["downsample_norm"]["scale"] is True
    assert mask["backbone"]["freq_embed_0"] is True and mask["neck"]["fpn_0"]["bias"] is True


def test_train_step_on_8_devices_equals_1_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(TESTS / "det_multidevice_step.py")], env=env, capture_output=True,
                          text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 8
    m1, m8 = out["metrics_1"], out["metrics_8"]
    for name in ("loss", "loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask", "grad_norm"):
        assert abs(m1[name] - m8[name]) <= 1e-5 * max(1.0, abs(m1[name])), (name, m1[name], m8[name])
    assert m1["num_pos_rois"] == m8["num_pos_rois"] and m1["num_proposals"] == m8["num_proposals"]
    # Adam's first update is ~lr * sign(grad): equal except where a gradient is ~0 and summation order flips it
    assert out["update_max_abs"] > 5e-5
    assert out["update_frac_diff_above_1e-6"] < 1e-3
