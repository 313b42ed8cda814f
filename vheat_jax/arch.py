"""The architecture of a vHeat checkpoint: read from its weights and config, compared, built.

A checkpoint's weights fix everything except pre-norm vs post-norm (both have the
same tensors); that comes from the checkpoint's own config, or the caller.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from vheat_jax.errors import ArchitectureMismatchError
from vheat_jax.model import VHeat, VHeatBackbone

log = logging.getLogger(__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int_sequence(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(_is_int(v) and v >= 0 for v in value)


# Bounds far above any real vHeat (B: dims 128, depths 2-2-18-2, 224-1344 px, 1k-22k classes), so that
# what a file claims never decides how much memory is allocated.
MAX_DIMS, MAX_DEPTH, MAX_IMG_SIZE, MAX_CLASSES, MAX_PARAMS = 1024, 64, 8192, 100_000, 2_000_000_000

_FIELD_TYPES: dict[str, tuple[Any, str]] = {
    "dims": (lambda v: _is_int(v) and 0 < v <= MAX_DIMS, f"an int in 1..{MAX_DIMS}"),
    "depths": (lambda v: _is_int_sequence(v) and 0 < len(v) <= 8 and max(v) <= MAX_DEPTH,
               f"a list of 1 to 8 ints in 0..{MAX_DEPTH}"),
    "post_norm": (lambda v: isinstance(v, bool), "a bool"),
    "layer_scale": (lambda v: v is None or _is_number(v), "a number or null"),
    "img_size": (lambda v: _is_int(v) and 0 < v <= MAX_IMG_SIZE, f"an int in 1..{MAX_IMG_SIZE}"),
    "num_classes": (lambda v: v is None or (_is_int(v) and 0 < v <= MAX_CLASSES),
                    f"an int in 1..{MAX_CLASSES} or null"),
    "infer_mode": (lambda v: isinstance(v, bool), "a bool"),
    "patch_size": (lambda v: _is_int(v) and 0 < v <= 64, "an int in 1..64"),
    "mlp_ratio": (lambda v: _is_number(v) and 0 < v <= 16, "a number in (0, 16]"),
}
"""What each :class:`Arch` field must be; a file that says otherwise is refused, naming the field."""


def _approx_params(dims: int, depths: tuple[int, ...], mlp_ratio: float) -> float:
    """Roughly the blocks' weights: per block at width ``d``, about ``(3 + 2 mlp_ratio) d^2``."""
    return sum(depth * (3 + 2 * mlp_ratio) * (dims * 2**i) ** 2 for i, depth in enumerate(depths))


@dataclasses.dataclass(frozen=True)
class Arch:
    """What is needed to build the Flax module that holds a checkpoint's weights."""

    dims: int
    depths: tuple[int, ...]
    post_norm: bool
    layer_scale: float | None
    img_size: int
    num_classes: int | None  # None: dense-prediction backbone (out-norms, no classifier)
    infer_mode: bool = False
    patch_size: int = 4
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        for name, (valid, expected) in _FIELD_TYPES.items():
            value = getattr(self, name)
            if not valid(value):
                raise ArchitectureMismatchError(f"architecture field {name} is {value!r:.60} "
                                                f"({type(value).__name__}), expected {expected}")
        object.__setattr__(self, "depths", tuple(self.depths))
        if (size := _approx_params(self.dims, self.depths, self.mlp_ratio)) > MAX_PARAMS:
            raise ArchitectureMismatchError(f"architecture dims {self.dims}, depths {_dash(self.depths)} would have "
                                            f"about {size:.2g} parameters, more than the {MAX_PARAMS:.0e} allowed")

    @property
    def dense(self) -> bool:
        return self.num_classes is None

    def build(self, **overrides: Any) -> VHeat | VHeatBackbone:
        """The Flax module for these weights; ``overrides`` set run-time fields (dtype, drop_path_rate...)."""
        fields = dict(
            dims=self.dims, depths=self.depths, post_norm=self.post_norm, layer_scale=self.layer_scale,
            img_size=self.img_size, infer_mode=self.infer_mode, patch_size=self.patch_size,
            mlp_ratio=self.mlp_ratio, drop_path_rate=0.0,
        )
        fields.update(overrides)
        if self.dense:
            return VHeatBackbone(**fields)
        return VHeat(num_classes=self.num_classes, **fields)

    def replace(self, **changes: Any) -> Arch:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Arch:
        """The architecture :meth:`to_json` wrote; anything else is an :class:`ArchitectureMismatchError`."""
        try:
            fields = json.loads(text)
        except (ValueError, RecursionError) as err:
            raise ArchitectureMismatchError(f"architecture description is not JSON ({err})") from None
        known = {field.name for field in dataclasses.fields(cls)}
        if not isinstance(fields, dict) or not set(fields) <= known or "dims" not in fields:
            raise ArchitectureMismatchError(f"architecture description {text!r:.80} is not an object with the "
                                            f"fields {', '.join(sorted(known))}")
        try:
            return cls(**fields)
        except TypeError as err:  # a required field missing
            raise ArchitectureMismatchError(f"architecture description: {err}") from None


def _dash(values) -> str:
    return "-".join(str(v) for v in values)


def arch_from_state_dict(state_dict: Mapping[str, Any], post_norm: bool | None = None) -> Arch:
    """Reads the architecture off a torch vHeat state dict (keys without ``backbone.``)."""
    if "patch_embed.conv2.weight" not in state_dict:
        raise ArchitectureMismatchError(
            "not a vHeat state dict: no 'patch_embed.conv2.weight' (first keys: "
            f"{', '.join(list(state_dict)[:5])})"
        )
    dims = state_dict["patch_embed.conv2.weight"].shape[0]
    depths: dict[int, set[int]] = {}
    for key in state_dict:
        match = re.match(r"layers\.(\d+)\.(\d+)\.op\.", key)
        if match:
            depths.setdefault(int(match[1]), set()).add(int(match[2]))
    stage_depths = tuple(len(depths.get(i, ())) for i in range(len(depths)))
    infer_mode = any(key.endswith(".op.k_exp") for key in state_dict)
    if infer_mode:
        res0 = state_dict["layers.0.0.op.k_exp"].shape[0]
    else:
        res0 = state_dict["freq_embed.0"].shape[0]
    layer_scale = 1e-5 if "layers.0.0.gamma1" in state_dict else None
    head = state_dict.get("classifier.3.weight")
    if post_norm is None:
        # Pre/post-norm leave no trace in the weights. The official variants pair
        # post-norm with layer scale (S, B) and pre-norm without it (T).
        post_norm = layer_scale is not None
        log.warning("the checkpoint does not say pre- or post-norm; assuming %s, as the official variants "
                    "pair it with %s layer scale. Override with --post-norm=true/false (convert_torch.py), "
                    "--post_norm (eval.py) or post_norm= in Python.",
                    "post-norm" if post_norm else "pre-norm", "their" if post_norm else "no")
    return Arch(
        dims=int(dims), depths=stage_depths, post_norm=bool(post_norm), layer_scale=layer_scale,
        img_size=int(res0) * 4, num_classes=None if head is None else int(head.shape[0]),
        infer_mode=infer_mode,
    )


def _config_get(config: Mapping, *path: str) -> Any:
    node: Any = config
    for name in path:
        if not isinstance(node, Mapping) or name not in node:
            return None
        node = node[name]
    return node


def _official_field(config: Mapping, path: str, valid, expected: str) -> Any:
    """``config[...path...]`` of the official yacs config, None when absent; refused when of the wrong type."""
    value = _config_get(config, *path.split("."))
    if value is not None and not valid(value):
        raise ArchitectureMismatchError(f"checkpoint config {path} is {value!r:.60} ({type(value).__name__}), "
                                        f"expected {expected}")
    return value


def official_post_norm(config: Mapping) -> bool | None:
    """``MODEL.VHEAT.POST_NORM`` of the official config, when it says (a bool; anything else is refused)."""
    return _official_field(config, "MODEL.VHEAT.POST_NORM", *_FIELD_TYPES["post_norm"])


def arch_from_official_config(config: Mapping, weights_arch: Arch) -> Arch:
    """Applies the official yacs config (as inert data) on top of what the weights say.

    Raises :class:`ArchitectureMismatchError` when the config and the weights disagree,
    or when a config value has the wrong type (naming the field).
    """
    vheat = _official_field(config, "MODEL.VHEAT", lambda v: isinstance(v, Mapping), "a config node") or {}
    fields = {"dims": "MODEL.VHEAT.EMBED_DIM", "depths": "MODEL.VHEAT.DEPTHS", "img_size": "DATA.IMG_SIZE",
              "num_classes": "MODEL.NUM_CLASSES", "patch_size": "MODEL.VHEAT.PATCH_SIZE",
              "mlp_ratio": "MODEL.VHEAT.MLP_RATIO"}
    asked = {name: _official_field(config, path, *_FIELD_TYPES[name]) for name, path in fields.items()}
    asked = {name: value for name, value in asked.items() if value is not None}
    if "depths" in asked:
        asked["depths"] = tuple(asked["depths"])
    if weights_arch.infer_mode:
        asked.pop("img_size", None)  # an inference-form k_exp may have been built for another size
    check_arch(weights_arch, weights_arch.replace(**asked), found_what="checkpoint weights",
               asked_what="checkpoint config")
    post_norm = official_post_norm(config)
    layer_scale = vheat.get("LAYER_SCALE") if vheat else None
    if layer_scale is not None and not _is_number(layer_scale):
        raise ArchitectureMismatchError(f"checkpoint config MODEL.VHEAT.LAYER_SCALE is {layer_scale!r:.60} "
                                        f"({type(layer_scale).__name__}), expected a number")
    return weights_arch.replace(
        **asked,
        post_norm=weights_arch.post_norm if post_norm is None else post_norm,
        layer_scale=weights_arch.layer_scale if layer_scale is None else float(layer_scale),
    )


def official_config(arch: Arch) -> dict:
    """The official yacs config's fields for ``arch``, as plain dicts: what a classification export carries
    under ``"config"`` so that it reads back with its pre/post-norm choice (official code ignores it)."""
    vheat = {"EMBED_DIM": arch.dims, "DEPTHS": list(arch.depths), "POST_NORM": arch.post_norm,
             "PATCH_SIZE": arch.patch_size, "MLP_RATIO": arch.mlp_ratio}
    if arch.layer_scale is not None:
        vheat["LAYER_SCALE"] = arch.layer_scale
    model = {"VHEAT": vheat} if arch.num_classes is None else {"VHEAT": vheat, "NUM_CLASSES": arch.num_classes}
    return {"MODEL": model, "DATA": {"IMG_SIZE": arch.img_size}}


def arch_differences(found: Arch, asked: Arch, found_what: str = "checkpoint",
                     asked_what: str = "config") -> list[str]:
    """Human-readable differences that change the weights' shapes or meaning."""
    problems = []
    if found.depths != asked.depths:
        problems.append(f"depths in {found_what} are {_dash(found.depths)}, {asked_what} asks {_dash(asked.depths)}")
    if found.dims != asked.dims:
        problems.append(f"stage-0 width (dims) in {found_what} is {found.dims}, {asked_what} asks {asked.dims}")
    if found.img_size != asked.img_size:
        problems.append(
            f"frequency embeddings in {found_what} are for {found.img_size}px input, {asked_what} asks "
            f"{asked.img_size}px (adapt with convert_torch.py --img-size {asked.img_size})")
    if found.num_classes != asked.num_classes:
        def describe(n):
            return "no classifier (dense backbone)" if n is None else f"{n} classes"
        problems.append(f"{found_what} has {describe(found.num_classes)}, {asked_what} asks "
                        f"{describe(asked.num_classes)}")
    if (found.layer_scale is None) != (asked.layer_scale is None):
        problems.append(f"layer scale is {'on' if found.layer_scale else 'off'} in {found_what}, "
                        f"{asked_what} asks {'on' if asked.layer_scale else 'off'}")
    if found.post_norm != asked.post_norm:
        def norm(post):
            return "post-norm" if post else "pre-norm"
        problems.append(f"{found_what} blocks are {norm(found.post_norm)}, {asked_what} asks {norm(asked.post_norm)}")
    if found.infer_mode != asked.infer_mode:
        problems.append(f"{found_what} is in {'inference' if found.infer_mode else 'training'} form, "
                        f"{asked_what} asks the {'inference' if asked.infer_mode else 'training'} form")
    if found.patch_size != asked.patch_size or found.mlp_ratio != asked.mlp_ratio:
        problems.append(f"patch size / mlp ratio in {found_what} are {found.patch_size}/{found.mlp_ratio}, "
                        f"{asked_what} asks {asked.patch_size}/{asked.mlp_ratio}")
    return problems


def check_arch(found: Arch, asked: Arch, found_what: str = "checkpoint", asked_what: str = "config") -> None:
    problems = arch_differences(found, asked, found_what, asked_what)
    if problems:
        raise ArchitectureMismatchError("; ".join(problems))
