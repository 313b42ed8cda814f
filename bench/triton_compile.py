#!/usr/bin/env python
"""The fused HCO kernels compiled for a Hopper GPU on a machine without one: registers, spills, shared memory.

    python3 -m venv /tmp/tritonenv && /tmp/tritonenv/bin/pip install triton==3.9.0   # once; ~290 MB
    python bench/triton_compile.py --triton-python /tmp/tritonenv/bin/python --out docs/triton_compile.json

Step 1, here (jax): each kernel of ``vheat_jax/hco_fused.py`` is lowered for CUDA at vHeat-T's stage
shapes (batch 128, 224 px, bfloat16; forward and backward), and Pallas' Triton IR is taken from its
debug print, stripped of debug locations. Step 2, in ``--triton-python`` (pip's Triton, no jax): each
module goes through Triton's whole pipeline for sm_90 with the kernel's ``num_warps``, and ptxas
(Triton's own, ``-v``) reports registers, spills and shared memory.

What this shows and what it does not: that the kernels compile to Hopper machine code, and whether
their tiles fit a multiprocessor's registers and shared memory. pip's Triton is not the Triton inside
XLA (the jaxlib that runs them on a GPU carries its own), so a difference between the two can still
fail there; and nothing here runs a kernel or times one.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import io
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# vHeat-T's stage maps and widths at 224 px: the separable layout at every stage, the Kronecker one where it fits.
STAGES = ((56, 96), (28, 192), (14, 384), (7, 768))
BATCH = 128


def clean_ttir(module_text: str) -> str:
    """A Triton module as Pallas' debug print shows it, without its debug locations (not parseable MLIR)."""
    text = re.sub(r" \[unknown\]", "", module_text)
    text = re.sub(r' "[^"\n]*"\(#loc\d*\)', "", text)
    return re.sub(r"^module @\w+", "module", text, flags=re.M)


def triton_modules(layout: str, resolution: int, channels: int) -> dict[str, str]:
    """Kernel name -> cleaned Triton IR of the forward and backward kernels of ``layout`` at this stage."""
    import jax
    import jax.numpy as jnp

    from vheat_jax import hco_fused

    x = jax.ShapeDtypeStruct((BATCH, resolution, resolution, channels), jnp.bfloat16)
    decay = jax.ShapeDtypeStruct((resolution, resolution, channels), jnp.bfloat16)

    def loss(x, decay):  # sin: the gradient needs the forward kernel's output, so both kernels are lowered
        return jnp.sum(jnp.sin(hco_fused.fused_diffuse(x, decay, layout, False).astype(jnp.float32)))

    printed = io.StringIO()
    plain = hco_fused.pl.pallas_call
    hco_fused.pl.pallas_call = functools.partial(plain, debug=True)  # Pallas prints each kernel's Triton IR
    try:
        with contextlib.redirect_stdout(printed):
            jax.jit(jax.grad(loss, argnums=(0, 1))).trace(x, decay).lower(lowering_platforms=("cuda",))
    finally:
        hco_fused.pl.pallas_call = plain
    modules = re.findall(r"(module @(\w+) \{.*?\n\} \[unknown\])", printed.getvalue(), re.S)
    return {name: clean_ttir(text) for text, name in modules}


def compile_child(jobs: list[dict]) -> list[dict]:
    """In pip's Triton: compile each job's IR for sm_90 and read ptxas' report."""
    import triton
    from triton.backends.compiler import GPUTarget

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas-blackwell"
    rows = []
    for job in jobs:
        row = {key: job[key] for key in ("layout", "resolution", "channels", "kernel", "num_warps")}
        try:
            compiled = triton.compile(job["path"], target=GPUTarget("cuda", 90, 32),
                                      options={"num_warps": job["num_warps"]})
        except Exception as error:  # noqa: BLE001 - the compiler's own words are the result
            rows.append({**row, "error": str(error).splitlines()[-1][-300:]})
            continue
        ptx = Path(job["path"]).with_suffix(".ptx")
        ptx.write_text(compiled.asm["ptx"])
        report = subprocess.run([str(ptxas), "-v", "--gpu-name", "sm_90a", str(ptx), "-o", "/dev/null"],
                                capture_output=True, text=True, check=False).stderr
        registers = re.search(r"Used (\d+) registers", report)
        spills = re.search(r"(\d+) bytes spill stores", report)
        rows.append({**row, "shared_bytes": compiled.metadata.shared,
                     "registers": int(registers.group(1)) if registers else None,
                     "spill_store_bytes": int(spills.group(1)) if spills else None})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--triton-python", help="a Python with pip's triton (step 2); without it, only step 1")
    parser.add_argument("--out", help="write the JSON here too")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(compile_child(json.loads(Path(args.child).read_text()))))
        return 0

    sys.path.insert(0, str(ROOT))
    from vheat_jax import hco_fused

    with tempfile.TemporaryDirectory() as folder:
        jobs = []
        for resolution, channels in STAGES:
            for layout in ("separable", "kron"):
                if not hco_fused.supports(layout, resolution, resolution):
                    continue
                for kernel, text in triton_modules(layout, resolution, channels).items():
                    path = Path(folder) / f"{kernel}_{resolution}.ttir"
                    path.write_text(text)
                    jobs.append({"layout": layout, "resolution": resolution, "channels": channels, "kernel": kernel,
                                 "num_warps": hco_fused.NUM_WARPS[layout], "path": str(path)})
        if not args.triton_python:
            print(json.dumps([{k: v for k, v in job.items() if k != "path"} for job in jobs], indent=1))
            return 0
        (Path(folder) / "jobs.json").write_text(json.dumps(jobs))
        done = subprocess.run([args.triton_python, __file__, "--child", str(Path(folder) / "jobs.json")],
                              capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(f"triton_compile: the Triton child failed: {done.stderr.strip().splitlines()[-1:]}")
        rows = json.loads(done.stdout.strip().splitlines()[-1])
    version = subprocess.run([args.triton_python, "-c", "import triton; print(triton.__version__)"],
                             capture_output=True, text=True, check=False).stdout.strip()
    report = {"date": datetime.date.today().isoformat(), "command": " ".join(sys.argv), "triton": version,
              "target": "sm_90a (H100/H200)", "batch": BATCH, "dtype": "bfloat16", "rows": rows}
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
