#!/usr/bin/env python
"""Top-5 classes, or segmentation / detection overlays, for image files: see --help."""

from vheat_jax.cli.predict import run

if __name__ == "__main__":
    run()
