"""One ``init_from`` policy for every task: a mismatched architecture is one line (exit 2); an ImageNet
checkpoint at another input size initialises segmentation and detection alike (the official zero padding)."""

import concurrent.futures

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_support import ROOT, run_train, subprocess_env

from vheat_jax import Arch, save_orbax

pytest_plugins = ("train_fixtures",)  # fixtures: image_folder, jax_cache_dir

SEG_CONFIG, DET_CONFIG = ROOT / "tests" / "seg_tiny_config.py", ROOT / "tests" / "det_tiny_config.py"


def imagenet_checkpoint(path, **arch_fields):
    arch = Arch(**{**dict(dims=8, depths=(1, 1, 1, 1), post_norm=False, layer_scale=None, img_size=32,
                          num_classes=10), **arch_fields})
    shapes = jax.eval_shape(arch.build().init, jax.random.key(0), jnp.zeros((1, arch.img_size, arch.img_size, 3)))
    rng = np.random.default_rng(0)
    save_orbax(jax.tree.map(lambda s: rng.normal(0, 0.05, s.shape).astype(np.float32), shapes["params"]), arch, path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    return {"wider": imagenet_checkpoint(root / "wider", dims=16, depths=(1, 1)),
            "wider4": imagenet_checkpoint(root / "wider4", dims=16),
            "small": imagenet_checkpoint(root / "small")}


def test_a_mismatched_init_from_is_one_line_for_every_task(tmp_path, image_folder, jax_cache_dir, checkpoints):
    env = subprocess_env(jax_cache_dir)
    runs = [lambda: run_train(tmp_path / "cls", image_folder, f"--config.init_from={checkpoints['wider']}",
                              env=env, check=False),
            lambda: run_train(tmp_path / "seg", None, f"--config.init_from={checkpoints['wider4']}", env=env,
                              check=False, config=SEG_CONFIG),
            lambda: run_train(tmp_path / "det", None, f"--config.data_dir={tmp_path / 'shapes'}",
                              f"--config.init_from={checkpoints['wider4']}", env=env, check=False, config=DET_CONFIG)]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda run: run(), runs))
    for task, result in zip(("classification", "segmentation", "detection"), results):
        assert result.returncode == 2, (task, result.stderr[-3000:])
        errors = [line for line in result.stderr.splitlines() if line.startswith("train.py: error: ")]
        assert len(errors) == 1 and "Traceback" not in result.stderr, (task, result.stderr[-3000:])
        assert "init_from checkpoint" in errors[0] and "stage-0 width (dims)" in errors[0], (task, errors[0])


def test_an_imagenet_checkpoint_at_another_size_initialises_segmentation_and_detection_alike(
        tmp_path, jax_cache_dir, checkpoints):
    env = subprocess_env(jax_cache_dir)
    init = f"--config.init_from={checkpoints['small']}"
    runs = [lambda: run_train(tmp_path / "seg", None, init, "--config.num_steps=1", "--config.model.img_size=64",
                              env=env, check=False, config=SEG_CONFIG),
            lambda: run_train(tmp_path / "det", None, f"--config.data_dir={tmp_path / 'shapes'}", init,
                              "--config.num_steps=1", env=env, check=False, config=DET_CONFIG)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        seg, det = pool.map(lambda run: run(), runs)
    for result in (seg, det):  # both backbones at 64 px
        assert result.returncode == 0, result.stderr[-3000:]
        assert "init_from: frequency embeddings 32px -> 64px (zero_pad)" in result.stderr
        assert "kept their fresh initialisation: outnorm_0/" in result.stderr  # as the official loaders
