"""vheat_jax.resize against PyTorch's bicubic interpolate and the official fixtures."""

import json
import pickle
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import VHEAT_FIXTURES
from vheat_jax.resize import resize_bicubic_hw, torch_bicubic_matrix, zero_pad_freq_embed

FIXTURES = VHEAT_FIXTURES

SIZES = (1, 2, 3, 7, 14, 16, 24, 32, 56, 64)
# (in_hw, out_hw): up, down, mixed, non-square, identity, and the dense-prediction
# case of the fixtures (16x16 embedding onto a 24x32 feature map).
HW_PAIRS = [
    ((16, 16), (24, 32)),
    ((7, 7), (14, 14)),
    ((14, 14), (7, 7)),
    ((64, 56), (16, 24)),
    ((3, 2), (7, 1)),
    ((1, 1), (3, 2)),
    ((32, 24), (32, 24)),
    ((56, 7), (2, 64)),
]


def torch_resize(x: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """The reference: torch's bicubic interpolate on (H, W, C) with C as channels."""
    t = torch.from_numpy(np.array(x)).permute(2, 0, 1)[None]
    out = F.interpolate(t, size=out_hw, mode="bicubic", align_corners=False)
    return out[0].permute(1, 2, 0).numpy()


def random_hwc(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("in_size", SIZES)
@pytest.mark.parametrize("out_size", SIZES)
def test_matrix_matches_torch_per_axis(in_size: int, out_size: int) -> None:
    v = random_hwc((in_size, 5), seed=in_size * 100 + out_size)
    # Resize along H only: (in, 1, C) -> (out, 1, C).
    expected = torch_resize(v[:, None, :], (out_size, 1))[:, 0, :]
    m = torch_bicubic_matrix(in_size, out_size)
    assert m.shape == (out_size, in_size) and m.dtype == np.float32
    np.testing.assert_allclose(m @ v, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", SIZES)
def test_same_size_is_identity(size: int) -> None:
    np.testing.assert_array_equal(torch_bicubic_matrix(size, size), np.eye(size, dtype=np.float32))


@pytest.mark.parametrize(("in_hw", "out_hw"), HW_PAIRS)
def test_resize_hw_matches_torch(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
    x = random_hwc((*in_hw, 6))
    expected = torch_resize(x, out_hw)
    got_np = resize_bicubic_hw(x, out_hw)
    got_jax = resize_bicubic_hw(jnp.asarray(x), out_hw)
    assert isinstance(got_np, np.ndarray) and got_np.shape == expected.shape
    np.testing.assert_allclose(got_np, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got_jax), expected, rtol=0, atol=1e-5)


def test_resize_under_jit() -> None:
    x = jnp.asarray(random_hwc((16, 16, 8)))
    eager = resize_bicubic_hw(x, (24, 32))
    jitted = jax.jit(resize_bicubic_hw, static_argnums=1)(x, (24, 32))
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(jitted), torch_resize(np.asarray(x), (24, 32)), rtol=0, atol=1e-5)


def test_jax_image_bicubic_differs_from_torch() -> None:
    """Why this module exists: jax's "bicubic" (Keys a=-0.5, antialiased) is another filter."""
    x = random_hwc((16, 16, 4))
    worst = 0.0
    for out_hw in [(24, 32), (8, 8), (16, 16)]:
        theirs = np.asarray(jax.image.resize(jnp.asarray(x), (*out_hw, 4), "bicubic"))
        worst = max(worst, float(np.abs(theirs - torch_resize(x, out_hw)).max()))
    if worst <= 1e-4:
        pytest.skip(f"jax.image.resize bicubic now matches torch (max err {worst:.1e})")
    assert worst > 1e-4


def _load_trusted_checkpoint(path: Path) -> dict:
    """Load the fixture checkpoint without its pickled yacs config class.

    ``weights_only=True`` refuses the file because of that ``yacs.CfgNode``
    (like the released checkpoints), and yacs is not a dependency; the fixture
    is trusted, so unpickle it with the config stood in for by a plain dict.
    """

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if module.split(".")[0] == "yacs":
                return type(name, (dict,), {})
            return super().find_class(module, name)

    pickle_module = types.ModuleType("pickle_without_yacs")
    pickle_module.Unpickler = Unpickler
    return torch.load(path, weights_only=False, pickle_module=pickle_module)


def test_zero_pad_matches_official_recipe_fixture() -> None:
    case = json.loads((FIXTURES / "tiny_prenorm.json").read_text())
    state = _load_trusted_checkpoint(FIXTURES / "tiny_prenorm.pth")["model"]
    expected = np.load(FIXTURES / "tiny_prenorm.npz")
    for i in range(4):
        embed = state[f"freq_embed.{i}"].numpy()
        padded = zero_pad_freq_embed(embed, i, case["img_size"], case["pad_to"])
        np.testing.assert_array_equal(padded, expected[f"padded_freq_embed{i}"])
        padded_jax = zero_pad_freq_embed(jnp.asarray(embed), i, case["img_size"], case["pad_to"])
        np.testing.assert_array_equal(np.asarray(padded_jax), expected[f"padded_freq_embed{i}"])


def test_zero_pad_refuses_to_shrink() -> None:
    with pytest.raises(ValueError, match="bicubic"):
        zero_pad_freq_embed(np.zeros((8, 8, 4), np.float32), 0, 128, 64)
