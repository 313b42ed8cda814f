"""The segmentation trainer end to end on a tiny model: train, evaluate, resume, export; ImageNet init."""

import jax
import numpy as np
from conftest import VHEAT_FIXTURES
from flax import traverse_util

from vheat_jax.convert import params_from_torch
from vheat_jax.seg.config import default_seg_config
from vheat_jax.seg.convert import read_mmseg_checkpoint
from vheat_jax.seg.evaluation import load_for_evaluation
from vheat_jax.seg.pretrained import initial_variables
from vheat_jax.seg.trainer import build_model, train_and_evaluate


def tiny_config(num_steps):
    config = default_seg_config()
    config.dataset = "synthetic"
    config.synthetic = {"num_train": 16, "num_val": 2, "height": 48, "width": 64}
    config.num_classes, config.reduce_zero_label = 5, False
    config.global_batch_size, config.num_workers = 4, 0
    config.aug.scale, config.aug.crop_size = (64, 48), (32, 32)
    config.model.backbone_overrides = {"dims": 8, "depths": (1, 1, 1, 1)}
    config.model.img_size, config.model.channels, config.model.aux_channels = 32, 8, 4
    config.optimizer.lr, config.optimizer.warmup_steps = 1e-3, 1
    config.num_steps, config.eval_every_steps, config.checkpoint_every_steps = num_steps, 2, 1
    config.test.crop_size, config.test.stride, config.test.scale = (32, 32), (21, 21), (64, 48)
    return config


def test_train_evaluate_resume_export(tmp_path):
    first = train_and_evaluate(tiny_config(2), tmp_path)
    assert first["step"] == 2 and first["num_images"] == 2 and 0 <= first["mIoU"] <= 100
    exported = read_mmseg_checkpoint(tmp_path / "upernet_mmseg.pth")
    assert set(exported.num_batches_tracked.values()) == {2}  # one BatchNorm forward per training step
    (tmp_path / "upernet_mmseg.pth").unlink()
    again = train_and_evaluate(tiny_config(2), tmp_path)  # restores step 2 (sharded state), nothing left to train
    assert again["step"] == 2 and (tmp_path / "upernet_mmseg.pth").exists()
    _, restored = load_for_evaluation(tiny_config(2), tmp_path)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(exported.variables)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    log = (tmp_path / "metrics.jsonl").read_text()
    assert log.count('"eval/mIoU"') == 1 and log.count('"train/loss"') == 1


def test_imagenet_init_pads_frequency_embeddings_as_the_official_recipe():
    config = tiny_config(1)
    config.model.backbone_overrides = {"dims": 16, "depths": (1, 1, 2, 1)}
    config.model.img_size = 128  # the classification fixture is trained at 64
    cfg, model = build_model(config)
    shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
    fresh = jax.tree.map(lambda s: np.full(s.shape, 0.5, s.dtype), shapes)  # stands in for a random init
    variables = initial_variables(str(VHEAT_FIXTURES / "tiny_prenorm.pth"), cfg, fresh)
    _, imagenet = params_from_torch(VHEAT_FIXTURES / "tiny_prenorm.pth")
    padded = np.load(VHEAT_FIXTURES / "tiny_prenorm.npz")
    backbone = variables["params"]["backbone"]
    for i in range(4):
        np.testing.assert_array_equal(backbone[f"freq_embed_{i}"], padded[f"padded_freq_embed{i}"])
        np.testing.assert_array_equal(backbone[f"outnorm_{i}"]["scale"], fresh["params"]["backbone"][f"outnorm_{i}"]["scale"])
    loaded = traverse_util.flatten_dict(backbone)
    for path, value in traverse_util.flatten_dict(imagenet).items():
        if path[0] not in ("head", "classifier_norm") and not path[0].startswith("freq_embed"):
            np.testing.assert_array_equal(loaded[path], value)
    for head in ("decode_head", "auxiliary_head"):
        for a, b in zip(jax.tree.leaves(variables["params"][head]), jax.tree.leaves(fresh["params"][head])):
            np.testing.assert_array_equal(a, b)
