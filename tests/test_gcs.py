"""gs:// end to end, against a GCS JSON-API server on loopback (tests/gcs_emulator.py), with the real clients.

tensorstore (Orbax's OCDBT checkpoints), gcsfs (etils.epath: image folders, metrics.jsonl,
converted files) and google-cloud-storage (Orbax's deletion of old checkpoints, TensorBoard
event files) talk HTTP to the server; nothing in the client stack is mocked.
"""

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import gcs_emulator
import jax
import numpy as np
import pytest
from conftest import VHEAT_FIXTURES
from etils import epath
from train_support import (
    GUARANTEE_OVERRIDES,
    GUARANTEE_STEPS,
    ROOT,
    assert_same_final_state,
    checkpoint_steps,
    read_metrics,
    run_train,
    start_train,
    subprocess_env,
    wait_for_path,
)

import vheat_jax

pytest_plugins = ("train_fixtures",)  # fixtures: image_folder, jax_cache_dir

BUCKET = "vheat-test"


@pytest.fixture(scope="module")
def gcs(image_folder):
    """The server, this process pointed at it, and the test image folder uploaded to gs://BUCKET/images."""
    server, url = gcs_emulator.start(BUCKET)
    saved = dict(os.environ)
    os.environ.update(gcs_emulator.client_env(url))
    for path in image_folder.rglob("*.png"):
        (epath.Path(f"gs://{BUCKET}/images") / path.relative_to(image_folder).as_posix()).write_bytes(path.read_bytes())
    yield url
    os.environ.clear()
    os.environ.update(saved)
    server.stop()


@pytest.fixture(scope="module")
def env(gcs, jax_cache_dir):
    return subprocess_env(jax_cache_dir, **gcs_emulator.client_env(gcs))


DATA = f"--config.data_dir=gs://{BUCKET}/images"


@pytest.fixture(scope="module")
def reference(env):
    workdir = epath.Path(f"gs://{BUCKET}/reference")
    run_train(workdir, None, *GUARANTEE_OVERRIDES, DATA, env=env)
    return workdir


def test_emulator_serves_generations_and_preconditions(gcs):
    """What Orbax's GCS commit relies on, checked on the raw protocol."""
    def request(method, path, data=None):
        req = urllib.request.Request(gcs + path, data=data, method=method)
        try:
            with urllib.request.urlopen(req) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), b""

    upload = f"/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name=pre/x"
    status, _, body = request("POST", upload + "&ifGenerationMatch=0", b"one")
    assert status == 200
    generation = json.loads(body)["generation"]
    assert request("POST", upload + "&ifGenerationMatch=0", b"two")[0] == 412  # exists already
    assert request("POST", upload + "&ifGenerationMatch=1", b"two")[0] == 412  # another generation
    status, headers, body = request("GET", f"/storage/v1/b/{BUCKET}/o/pre%2Fx?alt=media")
    assert status == 200 and body == b"one" and headers["x-goog-generation"] == generation
    assert request("GET", f"/storage/v1/b/{BUCKET}/o/pre%2Fx?alt=media&ifGenerationNotMatch={generation}")[0] == 304
    assert request("POST", upload + f"&ifGenerationMatch={generation}", b"two")[0] == 200


def test_training_on_gcs_writes_checkpoints_logs_and_keeps_latest_and_best(reference):
    steps = checkpoint_steps(reference)
    assert steps[-3:] == [GUARANTEE_STEPS - 4, GUARANTEE_STEPS - 2, GUARANTEE_STEPS]
    scores = {row["step"]: row["eval/ema_top1"] for row in read_metrics(reference) if "eval/ema_top1" in row}
    best_step = max(scores, key=lambda s: (scores[s], s))
    assert set(steps) == {GUARANTEE_STEPS - 4, GUARANTEE_STEPS - 2, GUARANTEE_STEPS, best_step}  # older ones deleted
    assert sorted(row["step"] for row in read_metrics(reference) if "train/loss" in row) == list(range(1, 25))
    assert any(p.name.startswith("events.out.tfevents") for p in (reference / "tensorboard").iterdir())


def test_sigkill_then_resume_on_gcs_matches_uninterrupted_run(env, reference):
    workdir = epath.Path(f"gs://{BUCKET}/killed")
    lease = "--config.workdir_lease_seconds=8"  # the killed run's lease blocks the resume this long
    process = start_train(workdir, None, *GUARANTEE_OVERRIDES, DATA, lease, env=env)
    wait_for_path(workdir / "checkpoints" / "6" / "commit_success.txt", process, timeout=300)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    killed_at = checkpoint_steps(workdir)[-1]
    assert process.returncode == -signal.SIGKILL and killed_at < GUARANTEE_STEPS
    # What a kill in the middle of a save leaves on GCS: the next step's folder without its
    # commit file (Orbax commits there by writing commit_success.txt, not by renaming).
    partial = workdir / "checkpoints" / str(killed_at + 2)
    (partial / "state" / "_METADATA").write_text("{}")
    result = run_train(workdir, None, *GUARANTEE_OVERRIDES, DATA, lease, env=env)
    resumed = [line for line in result.stderr.splitlines() if "resuming from" in line or "loop.py" in line][:3]
    assert f"resuming from the checkpoint at step {killed_at}" in result.stderr, resumed
    assert "taking over the lease" in result.stderr  # the SIGKILLed holder stopped refreshing it
    assert_same_final_state(workdir, reference, "top1")
    # The unfinished folder was ignored, then replaced by a real save (or deleted by retention since).
    assert not partial.exists() or (partial / "commit_success.txt").exists()


def _tiny_tfds_on_gcs(image_folder, local_dir) -> str:
    """The test image folder as a TFDS array_record data set (built locally, no TensorFlow), uploaded to gs://."""
    import tensorflow_datasets as tfds

    class VheatGcsImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(encoding_format="png"), "label": tfds.features.ClassLabel(num_classes=4)}))

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in ("train", "val")}

        def _generate_examples(self, split):
            for path in sorted((image_folder / split).rglob("*.png")):
                yield f"{path.parent.name}/{path.name}", {"image": str(path), "label": int(path.parent.name[-1])}

    VheatGcsImages(data_dir=str(local_dir), file_format="array_record").download_and_prepare()
    remote = epath.Path(f"gs://{BUCKET}/tfds")
    for path in local_dir.rglob("*"):
        if path.is_file():
            (remote / path.relative_to(local_dir).as_posix()).write_bytes(path.read_bytes())
    return "vheat_gcs_images"


def test_training_reads_a_tfds_array_record_dataset_from_gcs(env, image_folder, tmp_path):
    name = _tiny_tfds_on_gcs(image_folder, tmp_path / "tfds")
    workdir = epath.Path(f"gs://{BUCKET}/tfds_run")
    result = run_train(workdir, None, "--config.dataset=tfds", f"--config.tfds_name={name}",
                       f"--config.data_dir=gs://{BUCKET}/tfds", "--config.num_steps=4", env=env)
    assert checkpoint_steps(workdir)[-1] == 4
    evals = [row for row in read_metrics(workdir) if "eval/num_examples" in row]
    assert evals and evals[-1]["eval/num_examples"] == 12  # the val split: 4 classes x 3, read from gs://
    assert "resuming" not in result.stderr


def test_workdir_lease_refuses_a_live_holder_and_takes_over_a_dead_one(gcs):
    from vheat_jax.train.workdir_lock import LEASE_FILE, WorkdirLock, WorkdirLockedError

    workdir = epath.Path(f"gs://{BUCKET}/leased")
    workdir.mkdir(parents=True, exist_ok=True)
    with WorkdirLock(workdir, lease_s=8.0):  # alive: refreshes every 2 s (room for a loaded CI machine)
        with pytest.raises(WorkdirLockedError, match="in use by another training run"):
            WorkdirLock(workdir, lease_s=8.0).__enter__()
    assert not (workdir / LEASE_FILE).exists()  # released on exit
    (workdir / LEASE_FILE).write_text(json.dumps({"host": "gone", "pid": 1, "run": "dead", "heartbeat": 0}))
    with WorkdirLock(workdir, lease_s=2.0):  # a holder that never refreshes: taken over after 2 s
        assert json.loads((workdir / LEASE_FILE).read_text())["run"] != "dead"


def test_workdir_in_a_missing_bucket_is_one_line_and_exit_2(env):
    result = run_train(epath.Path("gs://no-such-bucket/run"), None, DATA, env=env, check=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("train.py: error: ")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "--workdir gs://no-such-bucket/run: cannot write there" in errors[0]


def run_script(env, *args):
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_eval_and_convert_read_and_write_gcs(env, reference, tmp_path):
    # eval.py on a gs:// workdir, data from gs://: the same top-1 as the run's own final evaluation.
    result = run_script(env, "eval.py", f"--config={ROOT / 'tests' / 'train_tiny_config.py'}",
                        f"--checkpoint={reference}", DATA, f"--workdir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    final = [row for row in read_metrics(reference) if row["step"] == GUARANTEE_STEPS and "eval/top1" in row][-1]
    assert json.loads(result.stdout.strip().splitlines()[-1])["top1"] == pytest.approx(final["eval/top1"])

    # convert_torch.py: .pth -> gs:// (msgpack and Orbax), gs:// -> .pth on gs://, back to local: the same weights.
    source = VHEAT_FIXTURES / "tiny_prenorm.pth"
    for output in (f"gs://{BUCKET}/conv/tiny.msgpack", f"gs://{BUCKET}/conv/tiny_orbax"):
        result = run_script(env, "convert_torch.py", source, output)
        assert result.returncode == 0, result.stderr[-3000:]
    result = run_script(env, "convert_torch.py", f"gs://{BUCKET}/conv/tiny_orbax", f"gs://{BUCKET}/conv/back.pth")
    assert result.returncode == 0, result.stderr[-3000:]
    _, want = vheat_jax.params_from_torch(source)
    for path in (f"gs://{BUCKET}/conv/tiny.msgpack", f"gs://{BUCKET}/conv/back.pth"):
        _, got = vheat_jax.load_any(path, post_norm=False)
        jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, got), jax.tree.map(np.asarray, want))
