#!/usr/bin/env python
"""Evaluates a vHeat classifier (top-1/top-5) or measures its throughput. See --help."""

from vheat_jax.cli.evaluate import run

if __name__ == "__main__":
    run()
