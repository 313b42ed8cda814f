"""eval.py: accuracy of a converted fixture checkpoint on a real image folder, and --throughput JSON."""

import json
import os
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from conftest import ROOT
from PIL import Image

import vheat_jax

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def preprocess(image: Image.Image, size: int) -> np.ndarray:
    """The official eval transform written out directly: short side to size/0.875, bicubic, center crop."""
    short = int(size / 0.875)
    w, h = image.size
    scale = short / min(w, h)
    image = image.resize((short, int(h * scale)) if w <= h else (int(w * scale), short), Image.BICUBIC)
    left, top = int(round((image.size[0] - size) / 2)), int(round((image.size[1] - size) / 2))
    image = image.crop((left, top, left + size, top + size))
    return (np.asarray(image, np.float32) / 255.0 - MEAN) / STD


def run_eval(*args):
    result = subprocess.run([sys.executable, "eval.py", *map(str, args)], cwd=ROOT, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_eval_top1_equals_direct_computation(vheat_fixtures, tmp_path):
    """Images go in the class the model predicts (7 of them) or the next one (5): top-1 must be 7/12."""
    arch, params = vheat_jax.params_from_torch(vheat_fixtures / "tiny_prenorm.pth", ema=True)
    vheat_jax.save_msgpack(params, arch, tmp_path / "ckpt.msgpack")
    model, variables = arch.build(), {"params": params}
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (int(rng.integers(64, 90)), int(rng.integers(64, 90)), 3),
                                           dtype=np.uint8)) for _ in range(12)]
    logits = model.apply(variables, jnp.asarray(np.stack([preprocess(im, 64) for im in images])))
    predictions = np.argmax(np.asarray(logits), -1)
    for index, (image, predicted) in enumerate(zip(images, predictions)):
        label = predicted if index < 7 else (predicted + 1) % 10
        folder = tmp_path / "data" / "val" / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:02d}.png")
    for label in range(10):  # every class folder exists, so folder order = label order
        (tmp_path / "data" / "val" / f"class{label}").mkdir(parents=True, exist_ok=True)

    result = run_eval("--config", "configs/vheat_t.py", "--checkpoint", tmp_path / "ckpt.msgpack",
                      "--config.data_dir", tmp_path / "data", "--config.eval_split", "val",
                      "--config.image_size", 64, "--config.num_classes", 10, "--config.eval_batch_size", 5,
                      "--config.num_workers", 0, "--out", tmp_path / "result.json")
    assert result["images"] == 12
    np.testing.assert_allclose(result["top1"], 100 * 7 / 12, atol=1e-6)
    assert result["top5"] >= result["top1"]
    _, infer_params = vheat_jax.to_inference_form(params, arch)  # eval.py runs the inference form
    assert result["params"] == sum(np.prod(np.shape(x)) for x in jax.tree.leaves(infer_params))
    assert json.loads((tmp_path / "result.json").read_text()) == result


def test_throughput_reports_well_formed_json(vheat_fixtures):
    result = run_eval("--config", "configs/vheat_t.py", "--checkpoint", vheat_fixtures / "tiny_postnorm_ls.pth",
                      "--config.image_size", 64, "--throughput", "--batch_size", 4, "--warmup", 1, "--iters", 2)
    assert result["batch_size"] == 4 and result["img_size"] == 64 and result["form"] == "infer"
    assert result["images_per_s"] > 0 and result["latency_ms_per_batch"] > 0 and result["compile_s"] > 0
    assert np.isclose(result["images_per_s"], 4 / (result["latency_ms_per_batch"] / 1e3))
    assert result["compiled_memory"]["temp_size_in_bytes"] > 0
    # The CPU settings of vheat_jax/runtime.py are in force and recorded.
    assert "--xla_cpu_experimental_ynn_fusion_type=individual_dot" in result["xla_flags"].split()
    if platform.libc_ver()[0] == "glibc":
        assert "glibc.malloc.hugetlb=1" in result["glibc_tunables"].split(":")
