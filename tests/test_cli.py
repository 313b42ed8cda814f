"""The command-line surface: --help of every entry point, and a user's mistakes as one line with exit status 2."""

import concurrent.futures
import logging
import os
import subprocess
import sys

import pytest
from train_support import ROOT

from vheat_jax.paths import NotAFileError
from vheat_jax.torch_io import load_pth
from vheat_jax.train.config import RENAMED_FIELDS

# Each entry point and flags its --help must list.
ENTRY_POINTS = {
    "train.py": ["--config", "--workdir"],
    "seg_train.py": ["--config", "--workdir"],
    "det_train.py": ["--config", "--workdir"],
    "eval.py": ["--config", "--checkpoint", "--throughput", "--batch_size", "--ema"],
    "seg_eval.py": ["--config", "--checkpoint", "--per_class"],
    "det_eval.py": ["--checkpoint", "--data_dir", "--split", "--scale"],
    "convert_torch.py": ["--ema", "--img_size", "--post_norm", "--inference_form", "--adapt_method"],
    "aot_compile.py": ["--config", "--topology", "--compute_dtype"],
}
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "VHEAT_HUGE_PAGES": "0"}


def run_script(script: str, *args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=300)


def run_all(calls: list[tuple]) -> list[subprocess.CompletedProcess]:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda call: run_script(*call), calls))


def test_help_of_every_entry_point_exits_0_and_lists_its_flags():
    results = run_all([(script, "--help") for script in ENTRY_POINTS])
    for (script, expected), result in zip(ENTRY_POINTS.items(), results):
        assert result.returncode == 0, (script, result.stderr[-2000:])
        lines = result.stdout.splitlines()
        start = lines.index("flags:") + 1
        lines = lines[start:lines.index("", start)]  # the flag list: one line per flag
        for flag in expected:
            described = [line for line in lines if line.strip().startswith(flag + "=") or line.strip().startswith(flag + ":")]
            assert len(described) == 1 and len(described[0].split(":", 1)[1].strip()) > 5, (script, flag)
        assert not any("absl.flags" in line or "--helpfull" in line for line in lines), script
        if "--config" in expected:
            assert "--config.<field>=<value>" in result.stdout, script


def one_line_error(result, script: str) -> str:
    assert result.returncode == 2, (script, result.returncode, result.stderr[-3000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"{script}: error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return errors[0]


def assert_one_line_errors(calls: list[tuple], expected: list[str]) -> None:
    """Each call (run in parallel) exits 2 with one error line that contains its expected text."""
    for call, text, result in zip(calls, expected, run_all(calls), strict=True):
        assert text in one_line_error(result, call[0]), (call, result.stderr[-2000:])


def test_config_mistakes_are_one_line_with_exit_2(tmp_path):
    old_schema = tmp_path / "old_seg_config.py"  # a config file written for the earlier segmentation schema
    old_schema.write_text("from vheat_jax.seg.config import default_config\n\n\ndef get_config():\n"
                          "    config = default_config()\n    config.model.variant = 'vheat_small'\n"
                          "    return config\n")
    calls = [
        ("seg_eval.py", f"--config={old_schema}", f"--checkpoint={tmp_path}"),
        ("train.py", "--config=configs/no_such_config.py", f"--workdir={tmp_path}/a"),
        ("train.py", "--config=configs/digits_demo.py", f"--workdir={tmp_path}/b", "--config.global_batchsize=8"),
        ("eval.py", "--config=configs/digits_demo.py", "--config.aug.reporb=0.1", "--throughput"),
        ("det_train.py", "--config=configs/det_demo_shapes.py", f"--workdir={tmp_path}/c", "--config.model.backbone=x"),
        ("train.py", "--config=configs/vheat_t.py:nope", f"--workdir={tmp_path}/d"),
        ("train.py", "--config=configs/digits_demo.py", f"--workdir={tmp_path}/e", "--config.num_steps=many"),
        ("train.py", "--config=configs/digits_demo.py"),
    ]
    expected = [
        "config field model.variant was renamed: set model.name instead",
        "no config file configs/no_such_config.py",
        "--config.global_batchsize: the config has no field 'global_batchsize' (did you mean --config.global_batch_size?)",
        "--config.aug.reporb: the config has no field 'aug.reporb' (did you mean --config.aug.reprob?)",
        f"config field model.backbone was renamed: set {RENAMED_FIELDS['model.backbone']} instead",
        "unknown data preset 'nope'",
        "--config.num_steps=many",
        "--workdir is required",
    ]
    assert_one_line_errors(calls, expected)


def test_missing_inputs_are_one_line_with_exit_2(tmp_path):
    empty = tmp_path / "empty"
    (empty / "train" / "class_a").mkdir(parents=True)
    (empty / "val" / "class_a").mkdir(parents=True)
    calls = [
        ("eval.py", "--config=configs/digits_demo.py", f"--checkpoint={tmp_path}/missing.pth"),
        ("seg_eval.py", "--config=configs/seg_demo.py", f"--checkpoint={tmp_path}/missing"),
        ("det_eval.py", f"--checkpoint={tmp_path}/missing.pth", f"--data_dir={tmp_path}"),
        ("convert_torch.py", f"{tmp_path}/missing.pth", f"{tmp_path}/out.msgpack"),
        ("train.py", "--config=tests/train_tiny_config.py", f"--workdir={tmp_path}/w1", f"--config.data_dir={tmp_path}/nope"),
        ("train.py", "--config=tests/train_tiny_config.py", f"--workdir={tmp_path}/w2", f"--config.data_dir={empty}"),
        ("train.py", "--config=tests/train_tiny_config.py", f"--workdir={tmp_path}/w3"),
    ]
    expected = [
        "missing.pth",
        "missing: no such file or directory",
        "missing.pth: no such file or directory",
        "missing.pth",
        "image folder split not found",
        "no images under",
        "config.data_dir is required",
    ]
    assert_one_line_errors(calls, expected)


def test_logs_hide_library_internals_unless_verbose(tmp_path, vheat_fixtures):
    """Converting to Orbax: only our line by default; orbax's INFO lines come back with -v 1."""
    quiet = run_script("convert_torch.py", str(vheat_fixtures / "tiny_prenorm.pth"), str(tmp_path / "quiet"))
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert quiet.stderr.strip() == "" and quiet.stdout.startswith("wrote ")
    verbose = run_script("convert_torch.py", "-v", "1", str(vheat_fixtures / "tiny_prenorm.pth"), str(tmp_path / "v"))
    assert verbose.returncode == 0 and "orbax" in verbose.stderr


def test_bad_values_are_one_line_before_anything_is_written(tmp_path):
    """Each task: caught while the flags are read, so the workdir is never created."""
    workdir = tmp_path / "w"
    calls = [
        ("train.py", "--config=configs/digits_demo.py", f"--workdir={workdir}", "--config.model.name=vheat_tinny"),
        ("seg_train.py", "--config=configs/seg_demo.py", f"--workdir={workdir}", "--config.model.name=vheat_tinny"),
        ("det_train.py", "--config=configs/det_demo_shapes.py", f"--workdir={workdir}",
         f"--config.init_from={tmp_path}/no/such.pth"),
        ("train.py", "--config=configs/digits_demo.py", f"--workdir={workdir}", "--config.optimizer.base_lr=nan"),
        ("train.py", "--config=configs/digits_demo.py", f"--workdir={workdir}", "--config.optimizer.base_lr=inf"),
        ("train.py", "--config=configs/digits_demo.py", f"--workdir={workdir}", "--config.optimizer.base_lr=-1e30"),
    ]
    expected = [
        "config.model.name = 'vheat_tinny': choose one of vheat_base, vheat_small, vheat_tiny",
        "config.model.name = 'vheat_tinny': choose one of",
        f"config.init_from = {tmp_path}/no/such.pth: no such file or folder",
        "config.optimizer.base_lr = nan: must be a finite number",
        "config.optimizer.base_lr = inf: must be a finite number",
        "config.optimizer.base_lr = -1e+30: a learning rate cannot be negative",
    ]
    assert_one_line_errors(calls, expected)
    assert not workdir.exists()


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only file system (EROFS, which even root cannot write), mounted for the test."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("mounting a read-only tmpfs needs root (CI runs as root)")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_outputs_on_a_read_only_disk_are_one_line_before_any_work(read_only_dir, vheat_fixtures):
    calls = [
        ("convert_torch.py", str(vheat_fixtures / "tiny_prenorm.pth"), f"{read_only_dir}/out.msgpack"),
        ("eval.py", "--config=configs/digits_demo.py", "--throughput", f"--out={read_only_dir}/result.json"),
    ]
    for (script, *_), result in zip(calls, run_all(calls)):
        assert f"{read_only_dir}: cannot write there" in one_line_error(result, script)
        assert "Read-only file system" in result.stderr


def test_checkpoints_that_are_not_regular_files_are_one_line_within_seconds(tmp_path, vheat_fixtures):
    """Links to devices and folders, and a FIFO among an Orbax export's files: refused before any read."""
    source = vheat_fixtures / "tiny_prenorm.pth"
    exports = {}
    for name in ("arch_zero", "checksums_zero", "fifo"):
        exports[name] = tmp_path / name
        assert run_script("convert_torch.py", str(source), str(exports[name])).returncode == 0
    (exports["arch_zero"] / "vheat_arch.json").unlink()
    (exports["arch_zero"] / "vheat_arch.json").symlink_to("/dev/zero")
    (exports["checksums_zero"] / "vheat_checksums.json").unlink()
    (exports["checksums_zero"] / "vheat_checksums.json").symlink_to("/dev/zero")
    data_file = max((p for p in (exports["fifo"] / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data_file.unlink()
    os.mkfifo(data_file)
    for name, target in (("zero.pth", "/dev/zero"), ("urandom.pth", "/dev/urandom"), ("folder.pth", str(tmp_path)),
                         ("urandom.msgpack", "/dev/urandom")):
        (tmp_path / name).symlink_to(target)
    calls = [("convert_torch.py", str(path), str(tmp_path / f"out_{i}.msgpack")) for i, path in enumerate([
        tmp_path / "zero.pth", tmp_path / "urandom.pth", tmp_path / "folder.pth", tmp_path / "urandom.msgpack",
        exports["arch_zero"], exports["checksums_zero"], exports["fifo"]])]
    expected = ["zero.pth is a character device", "urandom.pth is a character device",
                "folder.pth: no vheat_arch.json",  # a folder is read as an Orbax export
                "urandom.msgpack is a character device", "vheat_arch.json is a character device",
                "vheat_checksums.json is a character device", f"{data_file} is a FIFO"]
    assert_one_line_errors(calls, expected)
    with pytest.raises(NotAFileError, match="folder.pth is a folder"):  # the .pth reader the tasks call directly
        load_pth(tmp_path / "folder.pth")


def _record_of_an_error_raised_in(filename: str, logger_path: str) -> logging.LogRecord:
    """An ERROR record logged at ``logger_path`` about an exception raised in code from ``filename``."""
    try:
        exec(compile("raise OSError(28, 'No space left on device')", filename, "exec"))  # noqa: S102
    except OSError:
        exc_info = sys.exc_info()
    return logging.LogRecord("asyncio", logging.ERROR, logger_path, 1, "Future exception was never retrieved",
                             None, exc_info)


def test_a_library_errors_traceback_is_dropped_also_when_asyncio_reports_it():
    """An Orbax write's unretrieved future is logged by asyncio: its message stays, its traceback goes."""
    from vheat_jax.cli.common import _drop_library_chatter

    orbax = _record_of_an_error_raised_in("/site-packages/orbax/checkpoint/async_path.py", "/asyncio/base_events.py")
    assert _drop_library_chatter(orbax) and orbax.exc_info is None
    ours = _record_of_an_error_raised_in("/work/vheat_jax/train/loop.py", "/asyncio/base_events.py")
    assert _drop_library_chatter(ours) and ours.exc_info is not None  # not a library's: kept whole
