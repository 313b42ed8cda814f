"""The segmentation trainer end to end on a tiny model: train, evaluate, resume, export; ImageNet init."""

import jax
import numpy as np
import seg_tiny_config
from conftest import VHEAT_FIXTURES
from flax import traverse_util

from vheat_jax.convert import params_from_torch
from vheat_jax.seg.convert import read_mmseg_checkpoint
from vheat_jax.seg.evaluation import load_for_evaluation
from vheat_jax.seg.pretrained import initial_variables
from vheat_jax.seg.training import build_model
from vheat_jax.train.loop import train_and_evaluate


def tiny_config(num_steps):
    config = seg_tiny_config.get_config()
    config.num_steps, config.eval_every_steps, config.checkpoint_every_steps = num_steps, 2, 1
    config.log_every_steps, config.keep_checkpoints = 50, 3
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
    config.model.dims, config.model.depths = 16, (1, 1, 2, 1)
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
