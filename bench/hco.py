"""The heat operator alone (DCT, decay, IDCT) in each form, across resolutions and widths.

    python bench/hco.py                      # JSON lines on stdout, one per (shape, form)
    python bench/hco.py --plot docs/hco.png  # also a plot of time vs. resolution per form

Forms (vheat_jax.heat.HCO_FORMS): ``einsum`` (separable dense-basis einsums,
NHWC: the reference form), ``channel_major`` (the same on a (B, C, H, W) view),
``kron`` (one (HW, HW) Kronecker basis), ``fft`` (jax.scipy.fft.dctn). Each is
checked against ``einsum`` on the same input before it is timed; the last line
says which form won at each shape and what ``auto`` picks there.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp

from vheat_jax.benchmark import time_jitted
from vheat_jax.heat import HCO_FORMS, forms_for, heat_diffuse, select_form

# (resolution, channels, batch): vHeat's stage shapes at 224 and larger inputs.
SHAPES = [(7, 768, 8), (14, 384, 8), (28, 192, 8), (56, 96, 8), (64, 96, 2), (128, 96, 1), (256, 96, 1),
          (14, 96, 8), (56, 384, 2)]
KRON_LIMIT = 56 * 56  # the (HW, HW) basis is HW^2 floats: beyond this it is pointless


def measure(resolution: int, channels: int, batch: int, form: str, iters: int) -> dict:
    keys = jax.random.split(jax.random.key(0), 2)
    x = jax.random.normal(keys[0], (batch, resolution, resolution, channels))
    decay = jax.random.uniform(keys[1], (resolution, resolution, channels))
    reference = heat_diffuse(x, decay, "einsum")
    error = float(jnp.max(jnp.abs(jax.jit(heat_diffuse, static_argnums=2)(x, decay, form) - reference)))

    def loss(x, decay):
        return jnp.sum(heat_diffuse(x, decay, form) ** 2)

    forward = time_jitted(lambda x, d: heat_diffuse(x, d, form), x, decay, iters=iters)
    backward = time_jitted(jax.grad(loss, argnums=(0, 1)), x, decay, iters=iters)
    return {"resolution": resolution, "channels": channels, "batch": batch, "form": form,
            "forward_ms": 1e3 * forward["median_s"], "forward_backward_ms": 1e3 * backward["median_s"],
            "max_abs_diff_vs_einsum": error}


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("forward_ms", "forward_backward_ms")):
        for form in HCO_FORMS:
            points = sorted((r["resolution"], r[metric] / r["batch"]) for r in rows
                            if r["form"] == form and r["channels"] == 96)
            if points:
                ax.plot(*zip(*points), marker="o", label=form)
        ax.set(xscale="log", yscale="log", xlabel="resolution (C = 96)", ylabel=f"{metric} per image",
               title=metric.replace("_", " "))
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--plot", help="write a PNG plot here")
    args = parser.parse_args()
    rows = []
    for resolution, channels, batch in SHAPES:
        for form in forms_for(resolution, resolution):
            if form.startswith("fused_") and jax.default_backend() != "gpu":
                continue  # off a GPU it runs in Pallas' interpreter: a correctness aid, not a timing
            if form == "kron" and resolution * resolution > KRON_LIMIT:
                continue
            row = measure(resolution, channels, batch, form, args.iters)
            rows.append(row)
            print(json.dumps(row), flush=True)
    winners = {}
    for resolution, channels, batch in SHAPES:
        shape_rows = [r for r in rows if (r["resolution"], r["channels"]) == (resolution, channels)]
        best = min(shape_rows, key=lambda r: r["forward_backward_ms"])
        winners[f"{resolution}x{resolution}x{channels}"] = {
            "fastest_forward_backward": best["form"], "auto_picks": select_form(resolution, resolution),
            "fastest_forward": min(shape_rows, key=lambda r: r["forward_ms"])["form"]}
    print(json.dumps({"summary": winners, "devices": str(jax.devices())}))
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
