#!/usr/bin/env python
"""Evaluates UperNet-vHeat (aAcc, mIoU, mAcc) with mmseg's test pipeline. See --help and docs/segmentation.md."""

from vheat_jax.cli.seg_eval import run

if __name__ == "__main__":
    run()
