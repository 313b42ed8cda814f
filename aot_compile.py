#!/usr/bin/env python
"""Compiles the train step for a TPU slice on this machine; prints per-chip memory and FLOPs. See --help."""

from vheat_jax.cli.aot import run

if __name__ == "__main__":
    run()
