"""vHeat-S on ImageNet-1k from scratch: the official recipe (paper: 83.6% top-1 at 224 px, 300 epochs).

    python train.py --config configs/vheat_s.py --workdir $WORKDIR \\
        --config.data_dir=/data/imagenet                 # train/ and val/ class folders
    python train.py --config configs/vheat_s.py:tfds --workdir $WORKDIR \\
        --config.data_dir=$TFDS_DATA_DIR                  # tfds imagenet2012 (array_record)

Expected: EMA and raw top-1 around 83.6% on the 50k validation images after
300 epochs (187,500 steps of 2,048 images). The recipe (vheat_jax/train/config.py)
is the official one; only the drop-path rate differs between variants
(0.3 here). With fewer accelerators, keep ``global_batch_size=2048`` and set
``--config.grad_accum_steps=N`` (the learning rate follows the global batch), or
lower ``global_batch_size`` (the learning rates scale linearly with it, as in the
official code). Re-running the same command resumes from the last checkpoint.
"""

from vheat_jax.cls.config import imagenet_config


def get_config(data: str = "imagefolder"):
    """``data``: "imagefolder" (default) or "tfds"."""
    return imagenet_config("vheat_small", drop_path_rate=0.3, data=data)
