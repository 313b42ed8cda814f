#!/usr/bin/env python
"""Training input pipeline on real photos: per-core images/s, per-stage times, worker scaling, the
DCT-scaled decode's PSNR, and the tf.data anchor, side by side in one run. JSON out.

    pip install -e ".[bench]"                       # scikit-image's sample photos
    python bench/input_pipeline.py --out bench_out/input_pipeline.json
    # with the previous pipeline and the tf.data anchor in the same run:
    git worktree add /tmp/before <commit> && python3 -m venv /tmp/tfvenv && \\
      /tmp/tfvenv/bin/pip install -c constraints.txt -e ".[bench-tf]"
    python bench/input_pipeline.py --before /tmp/before --tf-python /tmp/tfvenv/bin/python

Photos: scikit-learn's two sample JPEGs and, with scikit-image installed, its colour sample
photos; each written ``--images`` / (number of photos) times as a random 60-100% crop, resized
to ImageNet's typical 500x375 (a quarter portrait, 375x500), re-encoded at quality 90.

Every rate comes from a child process: ``per_core`` pins it to CPU ``--core`` (as
``taskset -c``) and runs the loader in-process (``num_workers=0``); ``workers`` runs it
unpinned with N grain worker processes. Settings alternate within each of ``--repeats``
rounds, so a noisy neighbour hits them alike; ranges are over the rounds. The children exit
(their loaders closed) before the photo folder is deleted.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "retina.jpg",
                  "rocket.jpg", "motorcycle_left.png")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
RECIPE = "rrc(0.08-1)+flip+randaug(m9,mstd0.5,inc1)+reprob0.25+mixup0.8/cutmix1.0+smoothing0.1"


def sample_photos() -> dict[str, Image.Image]:
    """The colour sample photos that the installed packages ship, by file name."""
    import sklearn  # pylint: disable=import-outside-toplevel

    folders = {Path(sklearn.__file__).parent / "datasets" / "images": SKLEARN_PHOTOS}
    try:
        import skimage  # pylint: disable=import-outside-toplevel

        folders[Path(skimage.__file__).parent / "data"] = SKIMAGE_PHOTOS
    except ImportError:
        pass
    return {name: Image.open(folder / name).convert("RGB") for folder, names in folders.items() for name in names}


def write_photo_folder(root: Path, count: int, num_classes: int = 4) -> list[Path]:
    """``root/train/class_k/*.jpg``: ``count`` ImageNet-sized JPEGs cut from the sample photos."""
    photos = list(sample_photos().values())
    rng = np.random.default_rng(0)
    files = []
    for i in range(count):
        photo = photos[i % len(photos)]
        width, height = photo.size
        fraction = np.sqrt(rng.uniform(0.6, 1.0))
        w, h = int(width * fraction), int(height * fraction)
        left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        size = (375, 500) if i % 4 == 3 else (500, 375)
        folder = root / "train" / f"class_{i % num_classes}"
        folder.mkdir(parents=True, exist_ok=True)
        files.append(folder / f"{i:05d}.jpg")
        photo.crop((left, top, left + w, top + h)).resize(size, Image.BICUBIC).save(files[-1], quality=90)
    return files


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def scaled_decode_psnr(encoded: dict[str, bytes], size: int, crops: int) -> dict:
    """PSNR of the DCT-scaled decode + resize against full decode + crop + resize, same crop boxes."""
    from vheat_jax.cls import transforms as T  # pylint: disable=import-outside-toplevel

    values, exact = [], 0
    for name, data in encoded.items():
        for k in range(crops):
            fast = np.asarray(T.scaled_decode_crop(data, size, np.random.default_rng(k)))
            full = np.asarray(T.random_resized_crop(T.decode_image(data), size, np.random.default_rng(k)))
            value = psnr(fast, full)
            if np.isinf(value):
                exact += 1
            else:
                values.append(value)
    total = len(encoded) * crops
    summary = {"crops": total, "decoded_at_full_size": exact, "scaled": len(values)}
    if values:
        summary.update(psnr_db_mean=round(float(np.mean(values)), 2), psnr_db_min=round(float(np.min(values)), 2),
                       psnr_db_p10=round(float(np.percentile(values, 10)), 2))
    return summary


def encoded_photos(size_hint: tuple[int, int] | None) -> dict[str, bytes]:
    """Each sample photo as a quality-90 JPEG, at its own size or resized to ``size_hint``."""
    out = {}
    for name, photo in sample_photos().items():
        buffer = io.BytesIO()
        (photo.resize(size_hint, Image.BICUBIC) if size_hint else photo).save(buffer, "JPEG", quality=90)
        out[name] = buffer.getvalue()
    return out


# --------------------------------------------------------------------------- children


def _time_loader(spec: dict) -> dict:
    from vheat_jax.cls.config import default_config  # pylint: disable=import-outside-toplevel
    from vheat_jax.cls.data import create_train_loader  # pylint: disable=import-outside-toplevel

    config = default_config()
    config.data_dir, config.num_classes, config.image_size = spec["root"], 4, spec["image_size"]
    config.global_batch_size, config.num_workers = spec["batch"], spec["workers"]
    if "scaled_decode" in spec:
        config.aug.scaled_decode = spec["scaled_decode"]
    iterator = iter(create_train_loader(config, process_index=0, process_count=1))
    try:
        for _ in range(spec["warmup"]):
            next(iterator)
        start = time.perf_counter()
        for _ in range(spec["batches"]):
            batch = next(iterator)
        elapsed = time.perf_counter() - start
    finally:
        iterator.close()  # stops the read threads and workers before the parent deletes the photos
    return {"images_per_s": spec["batches"] * spec["batch"] / elapsed, "image_dtype": str(batch["image"].dtype)}


def _per_image_ms(fn, items) -> tuple[float, list]:
    start = time.perf_counter()
    out = [fn(item) for item in items]
    return (time.perf_counter() - start) / len(items) * 1e3, out


def _randaugment_op_ms(randaug, images, passes: int = 3) -> dict:
    """Each RandAugment op applied to every image (probability 1, the recipe's magnitude and
    noise; the fastest of ``passes``), and what the recipe spends per image on average: each of
    its ``num_layers`` draws picks one op uniformly and applies it with that op's probability."""
    ms = {}
    for op in randaug.ops:
        always = copy.copy(op)
        always.prob = 1.0
        ms[f"randaugment_op {op.name}"] = min(
            _per_image_ms(lambda a, always=always: always(a[0], a[1]),
                          [(im, np.random.default_rng(k)) for k, im in enumerate(images)])[0]
            for _ in range(passes))
    ms["randaugment_expected_from_ops"] = sum(
        cost * op.prob * randaug.num_layers / len(randaug.ops) for op, cost in zip(randaug.ops, ms.values()))
    return ms


def _profile_stages(spec: dict) -> dict:
    """Per-image milliseconds of each stage, run one after another over the same images."""
    import jax  # pylint: disable=import-outside-toplevel

    from vheat_jax.cls import data as pipeline
    from vheat_jax.cls import on_device  # pylint: disable=import-outside-toplevel
    from vheat_jax.cls import transforms as T  # pylint: disable=import-outside-toplevel
    from vheat_jax.cls.config import default_config  # pylint: disable=import-outside-toplevel

    size, batch = spec["image_size"], spec["batch"]
    config = default_config()
    config.num_classes = 1000
    transform = T.TrainTransform(size, config.aug)
    files = sorted(Path(spec["root"]).rglob("*.jpg"))[: spec["images"]]
    rngs = lambda: [np.random.default_rng(k) for k in range(len(files))]  # noqa: E731
    ms = {}
    ms["read"], data = _per_image_ms(lambda f: f.read_bytes(), files)
    ms["decode_full"], decoded = _per_image_ms(T.decode_image, data)
    ms["crop_resize_after_full_decode"], crops = _per_image_ms(
        lambda a: T.random_resized_crop(a[0], size, a[1]), list(zip(decoded, rngs())))
    ms["decode_crop_resize_scaled"], _ = _per_image_ms(lambda a: T.scaled_decode_crop(a[0], size, a[1]),
                                                        list(zip(data, rngs())))
    ms["flip"], flipped = _per_image_ms(lambda im: im.transpose(Image.FLIP_LEFT_RIGHT), crops)
    ms["randaugment"], augmented = _per_image_ms(lambda a: transform.randaug(a[0], a[1]),
                                                 list(zip(flipped, rngs())))
    ms["to_uint8_array"], arrays = _per_image_ms(lambda im: np.asarray(im, np.uint8), augmented)
    ms.update(_randaugment_op_ms(transform.randaug, flipped))
    ms["erasing_box"], boxes = _per_image_ms(lambda r: T.random_erasing_box(size, size, r), rngs())
    examples = [{"image": a, "label": np.int32(k % 1000), "valid": np.float32(1), "erase_box": b,
                 "erase_seed": np.uint32(k)} for k, (a, b) in enumerate(zip(arrays, boxes))]
    groups = [examples[i: i + batch] for i in range(0, len(examples) - batch + 1, batch)]
    stack = lambda group: {n: np.stack([e[n] for e in group]) for n in group[0]}  # noqa: E731
    per_batch = lambda fn, items: _per_image_ms(fn, items)[0] / batch  # noqa: E731
    ms["batch_stack_uint8"] = per_batch(stack, groups)
    batch_step = pipeline.TrainBatchTransform(pipeline.make_mixup(config), 0, 0)
    stacked = [stack(g) for g in groups]
    ms["batch_mixup_draw_targets_interleave"] = per_batch(lambda b: batch_step.map_with_index(0, b), stacked)
    ready = [batch_step.map_with_index(i, b) for i, b in enumerate(stacked)]
    device = jax.devices()[0]
    ms["transfer_uint8"] = per_batch(lambda b: jax.block_until_ready(jax.device_put(b, device)), ready)
    finish = jax.jit(on_device.train_images, static_argnums=1)
    on_device_batches = [jax.device_put(b, device) for b in ready]
    jax.block_until_ready(finish(on_device_batches[0], "pixel"))
    ms["on_device_normalize_erase_mix (this backend)"] = per_batch(
        lambda b: jax.block_until_ready(finish(b, "pixel")), on_device_batches)
    # What the float32 host pipeline did on top, measured on the same images: normalise per
    # image, stack float32, blend on the host (mixup), and ship 4x the bytes.
    ms["removed_host_normalize_float32"], floats = _per_image_ms(T.to_normalized_array, augmented)
    float_groups = [np.stack(floats[i: i + batch]) for i in range(0, len(floats) - batch + 1, batch)]
    ms["removed_host_stack_float32"] = per_batch(
        lambda i: np.stack(floats[i: i + batch]), range(0, len(floats) - batch + 1, batch))
    ms["removed_host_mixup_blend_float32"] = per_batch(
        lambda x: x * np.float32(0.3) + x[::-1] * np.float32(0.7), float_groups)
    ms["removed_transfer_float32"] = per_batch(
        lambda x: jax.block_until_ready(jax.device_put(x, device)), float_groups)
    return {name: round(value, 3) for name, value in ms.items()}


def _child(spec: dict) -> None:
    if spec.get("core") is not None:
        os.sched_setaffinity(0, {spec["core"]})  # before any thread pool is sized
    result = _profile_stages(spec) if spec["kind"] == "stages" else _time_loader(spec)
    print(json.dumps(result), flush=True)


def run_child(spec: dict, *, python: str = sys.executable, tree: str | None = None,
              script: Path = Path(__file__)) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    if tree:  # the pipeline of another checkout (PYTHONPATH comes before the editable install)
        env["PYTHONPATH"] = tree
    proc = subprocess.run([python, str(script), "--child", json.dumps(spec)], env=env, capture_output=True,
                          text=True, check=False, timeout=1800)
    if proc.returncode:
        raise RuntimeError(f"{spec['kind']} child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize(values: list[float]) -> dict:
    return {"median": round(float(np.median(values)), 1), "min": round(min(values), 1),
            "max": round(max(values), 1), "runs": [round(v, 1) for v in values]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512, help="photos written to the temporary folder")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=12, help="timed batches per rate, after --warmup")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every setting, alternating")
    parser.add_argument("--core", type=int, default=0, help="CPU the per-core children are pinned to")
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2],
                        help="grain worker counts for the unpinned scaling runs (none: skip)")
    parser.add_argument("--profile-images", type=int, default=128, help="images in the per-stage profile (0: skip)")
    parser.add_argument("--psnr-crops", type=int, default=64, help="crops per photo for the PSNR (0: skip)")
    parser.add_argument("--before", help="a checkout of an earlier pipeline, timed beside this one")
    parser.add_argument("--tf-python", help="a Python with tensorflow-cpu, for the tf.data anchor")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(json.loads(args.child))

    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "date": time.strftime("%Y-%m-%d"),
              "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
              "recipe": RECIPE, "image_size": args.image_size, "batch": args.batch}
    with tempfile.TemporaryDirectory() as scratch:
        files = write_photo_folder(Path(scratch), args.images)
        result["photos"] = {"sources": sorted(sample_photos()), "count": len(files),
                            "mean_jpeg_kb": round(float(np.mean([f.stat().st_size for f in files])) / 1024, 1)}
        if args.psnr_crops:
            result["scaled_decode_psnr"] = {
                "imagenet_sized_500x375": scaled_decode_psnr(encoded_photos((500, 375)), args.image_size,
                                                             args.psnr_crops),
                "photos_at_own_size": scaled_decode_psnr(encoded_photos(None), args.image_size, args.psnr_crops),
            }
        base = {"kind": "loader", "root": scratch, "image_size": args.image_size, "batch": args.batch,
                "batches": args.batches, "warmup": args.warmup}
        per_core = {"this: scaled decode": ({**base, "scaled_decode": True}, {}),
                    "this: full decode": ({**base, "scaled_decode": False}, {})}
        if args.before:
            per_core["before"] = (base, {"tree": args.before})
        if args.tf_python:
            per_core["tf.data anchor"] = (base, {"python": args.tf_python, "script": HERE / "input_pipeline_tf.py"})
        scaling = {f"this: {n} workers": ({**base, "workers": n}, {}) for n in args.workers}
        if args.before:
            scaling.update({f"before: {n} workers": ({**base, "workers": n}, {"tree": args.before})
                            for n in args.workers})
        rates: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for name, (spec, how) in per_core.items():
                rates.setdefault(f"per_core/{name}", []).append(
                    run_child({**spec, "workers": 0, "core": args.core}, **how)["images_per_s"])
            for name, (spec, how) in scaling.items():
                rates.setdefault(f"scaling/{name}", []).append(run_child(spec, **how)["images_per_s"])
            print(json.dumps({k: round(v[-1], 1) for k, v in rates.items()}), file=sys.stderr, flush=True)
        result["per_core_images_per_s"] = {k.split("/", 1)[1]: summarize(v) for k, v in rates.items()
                                           if k.startswith("per_core/")}
        result["workers_images_per_s"] = {k.split("/", 1)[1]: summarize(v) for k, v in rates.items()
                                          if k.startswith("scaling/")}
        if args.profile_images:
            result["stage_ms_per_image_one_core"] = run_child(
                {"kind": "stages", "root": scratch, "images": args.profile_images, "image_size": args.image_size,
                 "batch": args.batch, "core": args.core})
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
