#!/usr/bin/env python
"""Trains vHeat: classification, segmentation or detection, as the config's ``task`` says. See --help."""

from vheat_jax.cli.train import run

if __name__ == "__main__":
    run()
