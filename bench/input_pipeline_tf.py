#!/usr/bin/env python
"""The tf.data anchor for bench/input_pipeline.py: the training recipe with TensorFlow's image ops,
the way big_vision builds its input pipeline (needs ``pip install -e ".[bench-tf]"``).

Run by ``bench/input_pipeline.py --tf-python PYTHON`` as a child (``--child SPEC``); prints one
JSON line with ``images_per_s``. Per example: read -> ``sample_distorted_bounding_box`` (area
0.08-1, aspect 3/4-4/3, 10 attempts, whole image as fallback) -> ``decode_and_crop_jpeg`` (decodes
only the crop's rows and columns) -> bicubic resize -> flip -> RandAugment (2 layers of the 15 timm
ops at magnitude N(9, 0.5), each applied with p 0.5) -> uint8; then batches. No normalisation,
erasing or mixup on the host: the device does those, as in our pipeline.

What differs from our recipe (and so from timm's): TensorFlow's crop sampler draws the aspect
ratio uniformly, not log-uniformly, and its boxes follow its own rounding; the affine RandAugment
ops resample bilinearly (TensorFlow's projective transform has no bicubic); Equalize,
AutoContrast and Sharpness follow PIL's definitions in TensorFlow ops, not bit for bit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

MAGNITUDE, MAGNITUDE_STD, FILL = 9.0, 0.5, 128


def _augment_ops(tf):
    """timm's RandAugment ops (the ``Increasing`` variants of rand-m9-mstd0.5-inc1) in TensorFlow."""

    def blend(degenerate, image, factor):
        return tf.cast(tf.clip_by_value(tf.round(degenerate + factor * (image - degenerate)), 0, 255), tf.uint8)

    def signed(level, scale, rng):
        sign = tf.where(tf.random.stateless_uniform([], rng) < 0.5, -1.0, 1.0)
        return sign * level / 10.0 * scale

    def affine(image, matrix):  # matrix maps output (x, y, 1) to input coordinates, as PIL's transform
        out = tf.raw_ops.ImageProjectiveTransformV3(
            images=tf.cast(image, tf.float32)[None], transforms=matrix[None], output_shape=tf.shape(image)[:2],
            fill_value=float(FILL), interpolation="BILINEAR", fill_mode="CONSTANT")
        return tf.cast(tf.round(out[0]), tf.uint8)

    def gray(image):
        return tf.image.rgb_to_grayscale(tf.cast(image, tf.float32))

    def equalize_channel(channel):
        hist = tf.math.bincount(tf.cast(tf.reshape(channel, [-1]), tf.int32), minlength=256, maxlength=256)
        last = tf.gather(hist, tf.reduce_max(tf.where(hist > 0)))
        step = (tf.reduce_sum(hist) - last) // 255
        lut = (tf.cumsum(hist) - hist + step // 2) // tf.maximum(step, 1)
        lut = tf.cast(tf.clip_by_value(lut, 0, 255), tf.uint8)
        return tf.where(step > 0, tf.gather(lut, tf.cast(channel, tf.int32)), channel)

    def autocontrast_channel(channel):
        c = tf.cast(channel, tf.float32)
        lo, hi = tf.reduce_min(c), tf.reduce_max(c)
        scaled = tf.clip_by_value(tf.round((c - lo) * 255.0 / tf.maximum(hi - lo, 1.0)), 0, 255)
        return tf.cast(tf.where(hi > lo, scaled, c), tf.uint8)

    def per_channel(fn, image):
        return tf.stack([fn(image[..., k]) for k in range(3)], -1)

    def sharpen(image):  # PIL's SHARPEN filter: the 3x3 kernel inside, the border pixels unchanged
        kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
        x = tf.cast(image, tf.float32)
        smooth = tf.nn.depthwise_conv2d(x[None], tf.tile(kernel[:, :, None, None], [1, 1, 3, 1]), [1, 1, 1, 1],
                                        "VALID")[0]
        interior = tf.pad(tf.ones(tf.shape(image)[:2] - 2), [[1, 1], [1, 1]])[..., None]
        return interior * tf.round(tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])) + (1.0 - interior) * x

    def rotate(image, level, rng):
        angle = -signed(level, 30.0, rng) * math.pi / 180.0  # PIL: counter-clockwise
        h, w = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
        cx, cy = w / 2.0, h / 2.0
        cos, sin = tf.cos(angle), tf.sin(angle)
        return affine(image, tf.stack([cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy,
                                       0.0, 0.0]))

    def image_float(image):
        return tf.cast(image, tf.float32)

    return [
        lambda im, lv, r: per_channel(autocontrast_channel, im),  # AutoContrast
        lambda im, lv, r: per_channel(equalize_channel, im),  # Equalize
        lambda im, lv, r: 255 - im,  # Invert
        rotate,  # Rotate
        lambda im, lv, r: tf.bitwise.left_shift(tf.bitwise.right_shift(  # PosterizeIncreasing
            im, tf.cast(tf.round(lv / 10.0 * 4), tf.uint8)), tf.cast(tf.round(lv / 10.0 * 4), tf.uint8)),
        lambda im, lv, r: tf.where(image_float(im) >= 256.0 - lv / 10.0 * 256.0, 255 - im, im),  # SolarizeIncr.
        lambda im, lv, r: tf.where(im < 128, tf.cast(tf.minimum(image_float(im) + lv / 10.0 * 110.0, 255.0),
                                                     tf.uint8), im),  # SolarizeAdd
        lambda im, lv, r: blend(gray(im), image_float(im), 1.0 + signed(lv, 0.9, r)),  # ColorIncreasing
        lambda im, lv, r: blend(tf.reduce_mean(gray(im)), image_float(im), 1.0 + signed(lv, 0.9, r)),  # Contrast
        lambda im, lv, r: blend(0.0, image_float(im), 1.0 + signed(lv, 0.9, r)),  # BrightnessIncreasing
        lambda im, lv, r: blend(sharpen(im), image_float(im), 1.0 + signed(lv, 0.9, r)),  # SharpnessIncreasing
        lambda im, lv, r: affine(im, tf.stack([1.0, signed(lv, 0.3, r), 0., 0., 1., 0., 0., 0.])),  # ShearX
        lambda im, lv, r: affine(im, tf.stack([1.0, 0., 0., signed(lv, 0.3, r), 1., 0., 0., 0.])),  # ShearY
        lambda im, lv, r: affine(im, tf.stack([1.0, 0., signed(lv, 0.45, r) * tf.cast(tf.shape(im)[1], tf.float32),
                                               0., 1., 0., 0., 0.])),  # TranslateXRel
        lambda im, lv, r: affine(im, tf.stack([1.0, 0., 0., 0., 1., signed(lv, 0.45, r)
                                               * tf.cast(tf.shape(im)[0], tf.float32), 0., 0.])),  # TranslateYRel
    ]


def build_dataset(tf, files: list[str], size: int, batch: int, seed: int = 0):
    ops = _augment_ops(tf)

    def rand_augment(image, rng):
        for layer in range(2):
            keys = tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(rng, layer), 4)
            which = tf.random.stateless_uniform([], keys[0], 0, len(ops), tf.int32)
            level = tf.clip_by_value(MAGNITUDE + MAGNITUDE_STD * tf.random.stateless_normal([], keys[1]), 0.0, 10.0)
            applied = tf.switch_case(which, [lambda op=op: op(image, level, keys[2]) for op in ops])
            image = tf.ensure_shape(tf.where(tf.random.stateless_uniform([], keys[3]) < 0.5, applied, image),
                                    [size, size, 3])
        return image

    def example(index, path):
        rng = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64), index)
        keys = tf.random.experimental.stateless_split(rng, 3)
        data = tf.io.read_file(path)
        begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.image.extract_jpeg_shape(data), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=keys[0],
            min_object_covered=0.08, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10,
            use_image_if_no_bounding_boxes=True)
        window = tf.stack([begin[0], begin[1], crop[0], crop[1]])
        image = tf.image.decode_and_crop_jpeg(data, window, channels=3)
        image = tf.image.resize(image, [size, size], method="bicubic")
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        image = tf.image.stateless_random_flip_left_right(image, keys[1])
        return rand_augment(image, keys[2]), index % 4

    options = tf.data.Options()
    options.threading.private_threadpool_size = len(os.sched_getaffinity(0))
    ds = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed).repeat().enumerate()
    ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch, drop_remainder=True).prefetch(2).with_options(options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", required=True, help="JSON spec from bench/input_pipeline.py")
    spec = json.loads(parser.parse_args().child)
    if spec.get("core") is not None:
        os.sched_setaffinity(0, {spec["core"]})
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    threads = len(os.sched_getaffinity(0))
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    files = sorted(str(p) for p in Path(spec["root"]).rglob("*.jpg"))
    iterator = iter(build_dataset(tf, files, spec["image_size"], spec["batch"]).as_numpy_iterator())
    for _ in range(spec["warmup"]):
        next(iterator)
    start = time.perf_counter()
    for _ in range(spec["batches"]):
        images, _ = next(iterator)
    elapsed = time.perf_counter() - start
    print(json.dumps({"images_per_s": spec["batches"] * spec["batch"] / elapsed, "image_dtype": str(images.dtype)}))


if __name__ == "__main__":
    main()
