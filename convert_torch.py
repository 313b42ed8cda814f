#!/usr/bin/env python
"""Converts official PyTorch vHeat checkpoints to JAX and back. See --help."""

import sys

from vheat_jax.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
