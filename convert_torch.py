#!/usr/bin/env python
"""Converts official PyTorch vHeat checkpoints to JAX and back. See --help."""

from vheat_jax.cli.convert import run

if __name__ == "__main__":
    run()
