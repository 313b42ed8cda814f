#!/usr/bin/env python
"""Trains configs/digits_demo.py from scratch and prints JSON {top1, ema_top1, best_ema_top1, steps, wall_s}.

    python bench/digits_demo.py                # fresh temporary workdir, deleted afterwards
    python bench/digits_demo.py --workdir DIR  # keep the run (re-running resumes, so use a new DIR)

wall_s covers everything a user waits for: writing the digits folder,
compilation, training, evaluation and the final checkpoint.
"""

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="keep the run here instead of a temporary directory")
    args = parser.parse_args()

    start = time.perf_counter()
    from vheat_jax.train.loop import train_and_evaluate

    spec = importlib.util.spec_from_file_location("digits_demo", ROOT / "configs" / "digits_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with tempfile.TemporaryDirectory() as scratch:
        result = train_and_evaluate(module.get_config(), args.workdir or scratch)
    print(
        json.dumps(
            {
                "top1": round(result["top1"], 2),
                "ema_top1": round(result["ema_top1"], 2),
                "best_ema_top1": round(result["best_ema_top1"], 2),
                "steps": result["step"],
                "wall_s": round(time.perf_counter() - start, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
