"""One door for the backbone: ``config.model``'s fields mean the same for every task and config file."""

import importlib.util

import pytest
from test_cli import one_line_error, run_all

from vheat_jax.cls.training import build_model as classification_model
from vheat_jax.det.training import build_model as detection_model
from vheat_jax.seg.training import build_model as segmentation_model
from vheat_jax.train.config import base_config


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("config_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def backbone_of(task: str, config):
    """``(Arch, the backbone module)`` the task builds from ``config``."""
    if task == "classification":
        model = classification_model(config)
        return None, model
    if task == "segmentation":
        cfg, model = segmentation_model(config)
        return cfg.backbone, model.bind({}).backbone
    model, _, arch = detection_model(config)
    return arch, model.bind({}).backbone


@pytest.mark.parametrize("task, path", [("classification", "configs/vheat_t.py"),
                                        ("segmentation", "configs/upernet_vheat_tiny_ade20k.py"),
                                        ("detection", "configs/maskrcnn_vheat_tiny_1x.py")])
def test_every_backbone_field_reaches_every_tasks_backbone(task, path):
    config = load_config(path)
    assert set(base_config(task).model) <= set(config.model)  # declared once, present everywhere
    config.model.dims, config.model.depths, config.model.post_norm = 16, (1, 1, 2, 1), True
    config.model.layer_scale, config.model.hco_form, config.model.drop_path_rate = 1e-4, "channel_major", 0.25
    config.model.scan_blocks = True
    arch, backbone = backbone_of(task, config)
    for name, value in (("dims", 16), ("depths", (1, 1, 2, 1)), ("post_norm", True), ("layer_scale", 1e-4),
                        ("hco_form", "channel_major"), ("drop_path_rate", 0.25), ("scan_blocks", True)):
        assert getattr(backbone, name) == value, (task, name)
        if arch is not None and name in ("dims", "depths", "post_norm", "layer_scale"):
            assert getattr(arch, name) == value, (task, name)


def test_unset_fields_are_the_variants():
    config = load_config("configs/vheat_b.py")
    model = classification_model(config)
    assert (model.dims, model.depths, model.post_norm, model.layer_scale) == (128, (2, 2, 18, 2), True, 1e-5)


def test_backbone_overrides_are_flags_of_every_config_file(tmp_path):
    """Accepted on the command line (the run then stops at the misspelled variant, before any work)."""
    overrides = ("--config.model.dims=16", "--config.model.depths=(1, 1, 2, 1)", "--config.model.post_norm=True",
                 "--config.model.hco_form=channel_major", "--config.model.name=vheat_tinny")
    calls = [(script, f"--config={config}", f"--workdir={tmp_path / script}", *overrides)
             for script, config in (("train.py", "configs/vheat_t.py"), ("train.py", "configs/digits_demo.py"),
                                    ("seg_train.py", "configs/seg_demo.py"),
                                    ("det_train.py", "configs/det_demo_shapes.py"))]
    for call, result in zip(calls, run_all(calls)):
        assert "config.model.name = 'vheat_tinny'" in one_line_error(result, call[0]), call
