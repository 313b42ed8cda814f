"""The config vocabulary: the fields every task shares, the task names, and the checks before any work.

:func:`base_config` declares, once, what the shared training loop
(:mod:`vheat_jax.train.loop`) reads for every task: the task name, data location
and splits, batch size, seed, the model's variant name and regularisation, compute
dtype / remat / FSDP, durations and intervals, checkpoint retention, fine-tuning
source and the multi-process settings. Each task's defaults
(``vheat_jax.cls.config``, ``vheat_jax.seg.config``, ``vheat_jax.det.config``, each a
``default_config()``) start from it and add their own fields.

Durations can be given in epochs or steps: for ``num``, ``warmup`` and
``eval_every``, a ``*_steps`` value, when set, wins over ``*_epochs``; epochs
are turned into steps at run time from the size of the training split.
"""

from __future__ import annotations

import math

import ml_collections
from ml_collections import config_dict

from vheat_jax.errors import ConfigError

# The tasks the loop runs, each imported on demand (classification never imports the detection stack).
TASKS = {
    "classification": "vheat_jax.cls.task:ClassificationTask",
    "segmentation": "vheat_jax.seg.task:SegmentationTask",
    "detection": "vheat_jax.det.task:DetectionTask",
}

# Fields of earlier config schemas and what replaced them; a config that still sets one is refused
# with a line naming the new field (see check_renamed_fields).
RENAMED_FIELDS = {
    "model.variant": "model.name",
    "model.backbone": "model.name",
    "model.backbone_overrides": "model.<field> (e.g. model.dims, model.depths)",
    "model.num_classes": "num_classes",
    "init_backbone_from": "init_from",
    "init_backbone_ema": "init_from_ema",
    "init_from_mmdet": "init_from (it accepts an mmdetection checkpoint too)",
}


def base_config(task: str) -> ml_collections.ConfigDict:
    """The fields the shared training loop reads, for every task."""
    if task not in TASKS:
        raise ConfigError(f"config.task = {task!r}: choose one of {', '.join(TASKS)}")
    config = ml_collections.ConfigDict()
    config.task = task

    # --- Data ---
    config.dataset = ""
    config.data_dir = config_dict.placeholder(str)
    config.train_split = "train"
    config.eval_split = "val"
    config.num_classes = 0
    # Images per optimizer update, summed over all processes (and accumulation steps).
    config.global_batch_size = 16
    config.num_workers = 4  # loader workers per host
    config.seed = 0

    # --- Model: a vheat_jax variant (vheat_tiny / small / base), any backbone field overridable
    # (None: the variant's); every task builds its backbone from these (vheat_jax.train.backbone) ---
    config.model = ml_collections.ConfigDict(dict(
        name="vheat_tiny", drop_path_rate=0.1,
        dims=config_dict.placeholder(int), depths=config_dict.placeholder(tuple),
        post_norm=config_dict.placeholder(bool), layer_scale=config_dict.placeholder(float),
        hco_form="auto",  # vheat_jax.heat.HCO_FORMS or one per stage ("a,b,c,d"); "auto" picks per map size
        # Each stage's blocks as one lax.scan (compiled once per stage; the same parameters either way). Off: on
        # CPU it compiled no faster and stepped slower (docs/design.md); to be measured on GPU (bench/device_suite.py).
        scan_blocks=False,
    ))
    config.compute_dtype = "auto"  # "auto": bfloat16 on TPU/GPU, float32 on CPU; params stay float32
    config.remat = False  # rematerialise each Heat block in the backward pass (less memory, more compute)
    config.fsdp = False  # shard params and optimizer state over the data axis (ZeRO-3 style)
    # JAX's persistent compilation cache: WORKDIR/jax_cache (a gs:// workdir: ~/.cache/vheat_jax/jax_cache), so
    # a restarted run loads its compiled steps instead of compiling again. A JAX_COMPILATION_CACHE_DIR set by
    # the user wins; False turns it off.
    config.compilation_cache = True

    # --- Durations and intervals (``*_steps`` wins over ``*_epochs`` when set) ---
    config.num_epochs = 1.0
    config.num_steps = config_dict.placeholder(int)
    config.eval_every_epochs = 1.0
    config.eval_every_steps = config_dict.placeholder(int)
    config.log_every_steps = 50
    config.checkpoint_every_steps = 1000
    config.keep_checkpoints = 3  # the latest K; the best by the task's metric is kept as well
    config.workdir_lease_seconds = 60.0  # gs:// workdirs: how long a dead run's lease blocks a restart (local: none)

    # --- Fine-tuning source (what each task accepts: its module's docstring) ---
    config.init_from = ""
    config.init_from_ema = False  # with a .pth of the official trainer: its model_ema weights
    # Frequency embeddings to the run's img_size: "bicubic" (PyTorch-identical), or the official
    # downstream recipe "zero_pad" (grows only; seg/det default to it). post_norm: for files that do not say.
    config.init_adapt_method = "bicubic"
    config.init_post_norm = config_dict.placeholder(bool)

    # --- Multi-process runs (see vheat_jax/train/distributed.py) ---
    config.distributed = ml_collections.ConfigDict(
        dict(
            mode="auto",  # "auto" | "on" | "off"
            coordinator_address=config_dict.placeholder(str),
            num_processes=config_dict.placeholder(int),
            process_id=config_dict.placeholder(int),
        )
    )
    return config


def check_renamed_fields(config: ml_collections.ConfigDict) -> None:
    """Refuses a config that sets a field of an earlier schema, naming the field that replaced it."""
    for old, new in RENAMED_FIELDS.items():
        node = config
        *parents, leaf = old.split(".")
        for name in parents:
            node = node.get(name) if isinstance(node, ml_collections.ConfigDict) else None
        if isinstance(node, ml_collections.ConfigDict) and leaf in node:
            raise ConfigError(f"config field {old} was renamed: set {new} instead")


def _numbers(config: ml_collections.ConfigDict, prefix: str = ""):
    """``(dotted name, value)`` of every float field, nested ones included."""
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from _numbers(value, f"{prefix}{key}.")
        elif isinstance(value, float):
            yield f"{prefix}{key}", value


def check_model_name(model: ml_collections.ConfigDict) -> None:
    """``model.name`` must be an official variant (the one place this is checked)."""
    from vheat_jax.variants import VARIANTS  # noqa: PLC0415 - the config vocabulary itself needs no model

    if model.get("name") not in VARIANTS:
        raise ConfigError(f"config.model.name = {model.get('name')!r}: choose one of {', '.join(sorted(VARIANTS))}")


def check_hco_form(model: ml_collections.ConfigDict) -> None:
    """``model.hco_form`` must name known forms, one for all stages or one per stage."""
    from vheat_jax.heat import stage_forms  # noqa: PLC0415 - the config vocabulary itself needs no model
    from vheat_jax.variants import VARIANTS  # noqa: PLC0415

    depths = model.get("depths") or VARIANTS[model.name]["depths"]
    try:
        stage_forms(model.get("hco_form", "auto"), len(depths))
    except ValueError as error:
        raise ConfigError(f"config.model.{error}") from None


def check_config(config: ml_collections.ConfigDict) -> None:
    """Refuses, before any work, what no run can use: earlier schemas' fields, an unknown model variant or
    HCO form, a non-finite number or a negative learning rate, an ``init_from`` that does not exist."""
    from vheat_jax import paths  # noqa: PLC0415 - the config vocabulary itself needs no file access

    check_renamed_fields(config)
    if isinstance(config.get("model"), ml_collections.ConfigDict):
        check_model_name(config.model)
        check_hco_form(config.model)
    for name, value in _numbers(config):
        if not math.isfinite(value):
            raise ConfigError(f"config.{name} = {value}: must be a finite number")
        if (name.endswith(".lr") or name.endswith("_lr")) and value < 0:
            raise ConfigError(f"config.{name} = {value}: a learning rate cannot be negative")
    init_from = config.get("init_from")
    if init_from:
        paths.check_supported(init_from, "config.init_from")
        if not paths.as_path(init_from).exists():
            raise ConfigError(f"config.init_from = {init_from}: no such file or folder (a .pth, .msgpack, "
                              "or a convert_torch.py / trainer output folder)")
