#!/usr/bin/env python
"""Trains UperNet-vHeat (the same command as train.py, with the segmentation demo as default).

    python seg_train.py --config configs/seg_demo.py --workdir /tmp/seg_demo
    python seg_train.py --config configs/upernet_vheat_tiny_ade20k.py --workdir /ckpt/upernet_t \\
        --config.data_dir=/data/ADEChallengeData2016 --config.init_from=/ckpt/vHeat_tiny.pth
"""

from vheat_jax.cli.train import run

if __name__ == "__main__":
    run("configs/seg_demo.py", __doc__)
