#!/usr/bin/env python
"""bench/gpu_session.sh's files as the markdown tables of docs/gpu.md.

    python bench/gpu_report.py /work/.device/.../out      # the folder a device call's files came back to

Reads whichever of ``forms.json``, ``profile_*.json``, ``train_variants.jsonl``, ``compile*.json`` are
there and prints, for each, a table: the forms per stage (forward + backward ms, the fastest marked,
what ``auto`` picks today), each profile's parts against their memory ceilings, the train-step
variants, and the compile times. Standard library only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def forms_table(report: dict) -> str:
    sections = report["sections"]
    out = []
    for section, key in (("hco_forms", "HCO"), ("dwconv_forms", "depthwise conv")):
        by_stage: dict[tuple, dict] = {}
        for row in sections.get(section, []):
            by_stage.setdefault((row["resolution"], row["channels"]), {})[row["form"]] = row["forward_backward_ms"]
        forms = sorted({form for stage in by_stage.values() for form in stage})
        rows = []
        for (resolution, channels), times in sorted(by_stage.items(), reverse=True):
            best = min(times, key=times.get)
            rows.append([f"{resolution}x{resolution}x{channels}"] + [
                "-" if form not in times else f"**{times[form]:.3f}**" if form == best else f"{times[form]:.3f}"
                for form in forms])
        if rows:
            out.append(f"{key}, forward + backward ms, batch {sections[section][0]['batch']}:\n\n"
                       + table(["stage"] + forms, rows))
    return "\n\n".join(out)


def profile_table(name: str, report: dict) -> str:
    ceilings = report.get("memory_ceiling_ms", {})
    rows = [[part, f"{ms:.2f}", f"{ceilings[part]:.2f}" if part in ceilings else "-",
             f"{ms / ceilings[part]:.1f}x" if ceilings.get(part) else "-"]
            for part, ms in report["categories_ms"].items()]
    head = (f"{name}: {report['what']}, {report['model']}, batch {report['batch']}, {report['dtype']}, "
            f"hco_form {report.get('hco_form', 'auto')}; {report['wall_ms_per_iter_while_tracing']} ms per "
            f"iteration while tracing, copy rate {report.get('copy_rate_gb_s', '?')} GB/s")
    return head + "\n\n" + table(["part", "ms", "memory ceiling ms", "time / ceiling"], rows)


def variants_table(lines: list[dict]) -> str:
    rows = [[line["hco_form"], line["scan_blocks"], line["images_per_s"], line["first_step_s_incl_compile"]]
            for line in lines]
    return table(["hco_form", "scan_blocks", "img/s", "first step s (compile)"], rows)


def compile_table(name: str, report: dict) -> str:
    rows = [[row["model"], row["scan_blocks"], row["cold_train_compile_s"]["median"],
             row["warm_train_compile_s"]["median"], row["cold_eval_compile_s"]["median"],
             row["cold_train_step_s"]["median"]] for row in report["rows"]]
    return (f"{name} (XLA_FLAGS {report.get('xla_flags') or 'default'}):\n\n"
            + table(["model", "scanned", "train compile cold s", "from cache s", "eval compile cold s", "step s"],
                    rows))


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not Path(argv[1]).is_dir():
        sys.exit("usage: python bench/gpu_report.py OUT_DIR (the folder of bench/gpu_session.sh's files)")
    folder = Path(argv[1])
    parts = []
    if (folder / "forms.json").exists():
        parts.append(forms_table(json.loads((folder / "forms.json").read_text())))
    for path in sorted(folder.glob("profile_*.json")):
        parts.append(profile_table(path.stem, json.loads(path.read_text())))
    if (folder / "train_variants.jsonl").exists():
        lines = [json.loads(line) for line in (folder / "train_variants.jsonl").read_text().splitlines() if line]
        parts.append(variants_table(lines))
    for path in sorted(folder.glob("compile*.json")):
        parts.append(compile_table(path.stem, json.loads(path.read_text())))
    print("\n\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
