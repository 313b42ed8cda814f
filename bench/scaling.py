"""Whole-model inference cost versus input size: vHeat-T against a ViT of equal cost at 224.

    python bench/scaling.py --out docs/scaling.json --plot docs/scaling.png

For each input size (224 .. 1024) and model: median time of a batch-1 jitted
forward (inference form for vHeat), MACs read off the traced computation
(vheat_jax.flops), and the memory the compiled executable needs (XLA's memory
analysis: arguments + outputs + temporaries). Then the slope of log(cost) against
log(tokens) is fitted over the sizes >= 384, where the asymptotic term dominates:
vHeat's heat operator grows as N^1.5, attention as N^2 (N = tokens).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from vit_baseline import ViT  # noqa: E402

import vheat_jax  # noqa: E402
from vheat_jax.benchmark import live_bytes, time_jitted  # noqa: E402
from vheat_jax.flops import count_macs  # noqa: E402

SIZES = (224, 384, 512, 768, 1024)


def measure(name: str, module, tokens: int, size: int, iters: int) -> dict:
    images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    params = jax.eval_shape(module.init, jax.random.key(0), images)
    forward = lambda p, x: module.apply(p, x)  # noqa: E731
    macs = count_macs(forward, params, images)
    concrete = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, size, size, 3)))
    timing = time_jitted(forward, concrete, jnp.ones((1, size, size, 3)), warmup=1, iters=iters)
    memory = timing["compiled_memory"] or {}
    return {"model": name, "size": size, "tokens": tokens, "gmacs": macs / 1e9,
            "latency_s": timing["median_s"], "compile_s": timing["compile_s"],
            "compiled_bytes": live_bytes(memory),
            "temp_bytes": memory.get("temp_size_in_bytes"), "device_peak_bytes": timing["device_peak_bytes"]}


def fitted_exponent(rows: list[dict], metric: str) -> float:
    rows = [r for r in rows if r["size"] >= 384]
    slope, _ = np.polyfit(np.log([r["tokens"] for r in rows]), np.log([r[metric] for r in rows]), 1)
    return float(slope)


def plot(rows: list[dict], fits: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, metric, label in zip(axes, ("latency_s", "gmacs", "compiled_bytes"),
                                 ("latency, batch 1 (s)", "GMACs", "compiled memory (bytes)")):
        for model in ("vheat_tiny", "vit_s16"):
            points = [(r["size"], r[metric]) for r in rows if r["model"] == model]
            ax.plot(*zip(*points), marker="o",
                    label=f"{model}: cost ~ N^{fits[model][metric]:.2f}")
        ax.set(xscale="log", yscale="log", xlabel="input size (px)", ylabel=label)
        ax.set_xticks(SIZES, [str(s) for s in SIZES])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.legend()
    fig.suptitle(f"inference cost vs input size on {jax.devices()[0].device_kind} "
                 "(exponents fitted over 384..1024 against token count N)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--out", help="write the JSON here too")
    parser.add_argument("--plot", help="write a PNG plot here")
    args = parser.parse_args()
    rows = []
    for size in SIZES:
        vheat = vheat_jax.create_model("vheat_tiny", infer_mode=True, img_size=size)
        for name, module, tokens in (("vheat_tiny", vheat, (size // 4) ** 2), ("vit_s16", ViT(), (size // 16) ** 2)):
            row = measure(name, module, tokens, size, args.iters)
            rows.append(row)
            print(json.dumps(row), flush=True)
    fits = {model: {metric: fitted_exponent([r for r in rows if r["model"] == model], metric)
                    for metric in ("latency_s", "gmacs", "compiled_bytes")}
            for model in ("vheat_tiny", "vit_s16")}
    result = {"rows": rows, "fitted_exponents_vs_tokens": fits, "device": jax.devices()[0].device_kind}
    print(json.dumps({"fitted_exponents_vs_tokens": fits}))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if args.plot:
        plot(rows, fits, args.plot)


if __name__ == "__main__":
    main()
