"""Adversarial checkpoints and a fuzz harness for the loaders, run under a memory cap.

Every case is a file (or config) whose only acceptable outcome is a clean load or a
:class:`~vheat_jax.CheckpointError`; anything else (``MemoryError``, ``TypeError``,
a crash) and any growth of peak memory beyond ``--max-rss-mb`` fails the run.

CI (``tests/test_loader_fuzz.py``) runs the regression corpus below and a short,
derandomised hypothesis run. A longer run, with fresh random examples::

    python tests/fuzz_loaders.py --examples 20000 --random

It prints one JSON line: cases run, outcomes by kind, peak RSS growth.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import struct
import sys
import tracemalloc
import zipfile
from collections import Counter
from collections.abc import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vheat_jax.arch import Arch, arch_from_official_config  # noqa: E402
from vheat_jax.seg.convert import model_cfg_from_text  # noqa: E402
from vheat_jax.torch_io import CheckpointError, load_pth, save_pth  # noqa: E402

# ------------------------------------------------------------------------------------ hand-made pickles


def _global(module: bytes, name: bytes) -> bytes:
    return b"c" + module + b"\n" + name + b"\n"


def _str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int(value: int) -> bytes:
    if -(1 << 31) <= value < 1 << 31:
        return b"J" + struct.pack("<i", value)
    return b"\x8a\x08" + struct.pack("<q", value)


def _tuple(values) -> bytes:
    return b"(" + b"".join(_int(v) for v in values) + b"t"


def tensor_pickle(key: str, numel: int, size, stride, storage: bytes = b"FloatStorage") -> bytes:
    """The opcodes ``torch.save`` writes for one tensor: ``_rebuild_tensor_v2(storage, 0, size, stride, ...)``."""
    return (_global(b"torch._utils", b"_rebuild_tensor_v2") + b"((" + _str("storage") + _global(b"torch", storage)
            + _str(key) + _str("cpu") + _int(numel) + b"tQ" + _int(0) + _tuple(size) + _tuple(stride) + b"\x89"
            + _global(b"collections", b"OrderedDict") + b")R" + b"tR")


def zeros(nbytes: int) -> list[bytes]:
    """``nbytes`` zero bytes as 1 MiB chunks, so that building a bomb does not itself take its size in memory."""
    chunk = bytes(min(nbytes, 1 << 20))
    return [chunk] * (nbytes // len(chunk)) + [bytes(nbytes % len(chunk))]


def archive(data_pkl: bytes | list[bytes], storages: dict[str, bytes | list[bytes]] | None = None,
            compression: dict[str, int] | None = None) -> bytes:
    """A torch-layout zip: ``archive/data.pkl``, ``archive/data/<key>``, ``archive/byteorder``.

    A record given as a list of chunks is streamed (and compressed, per ``compression``) chunk by chunk.
    """
    compression = compression or {}
    records = {"data.pkl": data_pkl, "byteorder": b"little",
               **{f"data/{key}": raw for key, raw in (storages or {}).items()}}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for name, raw in records.items():
            info = zipfile.ZipInfo(f"archive/{name}")
            info.compress_type = compression.get(name, zipfile.ZIP_STORED)
            with zf.open(info, "w", force_zip64=True) as out:
                for chunk in [raw] if isinstance(raw, bytes) else raw:
                    out.write(chunk)
    return buffer.getvalue()


def state_dict_pickle(tensors: dict[str, bytes]) -> bytes:
    return b"\x80\x02}(" + b"".join(_str(k) + v for k, v in tensors.items()) + b"u."


def real_file(arrays: dict[str, np.ndarray]) -> bytes:
    """A valid checkpoint written by :func:`save_pth` (loadable by ``torch.load(weights_only=True)``)."""
    path = io.BytesIO()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        save_pth(arrays, os.path.join(tmp, "x.pth"))
        with open(os.path.join(tmp, "x.pth"), "rb") as f:
            path.write(f.read())
    return path.getvalue()


def _patch(data: bytes, offset: int, raw: bytes) -> bytes:
    return data[:offset] + raw + data[offset + len(raw):]


def _central_entry(data: bytes, name: bytes | None = None) -> int:
    """Offset of the central-directory entry of record ``name`` (the first entry if None)."""
    position = data.index(b"PK\x01\x02")
    while name is not None and data[position + 46: position + 46 + len(name)] != name:
        position = data.index(b"PK\x01\x02", position + 1)
    return position


def regression_corpus() -> dict[str, bytes]:
    """The adversarial files of issue 12, each one that used to load wrongly or blow up memory."""
    small = real_file({"w": np.arange(16, dtype=np.float32)})
    eocd = small.rindex(b"PK\x05\x06")
    data_entry = _central_entry(small, b"archive/data/0")
    corpus = {
        # a 16-byte storage viewed with stride 0 as 2^30 x 4 floats (16 GiB)
        "stride0_16GiB": archive(state_dict_pickle({"w": tensor_pickle("0", 4, (1 << 30, 4), (0, 1))}),
                                 {"0": bytes(16)}),
        # one 4 MiB storage under 32 distinct full-size views (128 MiB materialised)
        "shared_storage_x32": archive(state_dict_pickle(
            {f"t{i}": tensor_pickle("0", 1 << 20, (1 << 20,), (1,)) for i in range(32)}), {"0": zeros(4 << 20)}),
        # a deflated 16 MiB storage (a 16 KB file); refused for being compressed, whatever it inflates to
        "deflate_bomb": archive(state_dict_pickle({"w": tensor_pickle("0", 16, (16,), (1,))}),
                                {"0": zeros(16 << 20)}, {"data/0": zipfile.ZIP_DEFLATED}),
        # a bzip2-compressed data.pkl that inflates to 16 MiB
        "bzip2_pickle": archive([b"\x80\x02C\xff", *zeros(16 << 20), b"."], compression={
            "data.pkl": zipfile.ZIP_BZIP2}),
        # memo index 2^27 in a 20-byte pickle (the C unpickler sizes its memo table by it)
        "memo_index_2^27": archive(b"\x80\x02]r" + struct.pack("<I", 1 << 27) + b"."),
        # BINBYTES8 claiming 8 GiB
        "binbytes8_8GiB": archive(b"\x80\x04\x8e" + struct.pack("<Q", 8 << 30) + b"."),
        # protocol-5 buffer opcodes over a bytearray
        "readonly_buffer": archive(b"\x80\x05\x96" + struct.pack("<Q", 4) + b"abcd\x98."),
        # a list nested 100,000 deep, and one that contains itself
        "deep_list": archive(b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b"."),
        "self_list": archive(b"\x80\x02]q\x00h\x00a."),
        "deep_marks": archive(b"\x80\x02" + b"(" * 10_000 + b"t" * 10_000 + b"."),
        # BUILD on builtins.getattr, setting the loader's function's attributes
        "getattr_build": archive(b"\x80\x02" + _global(b"builtins", b"getattr") + b"}"
                                 + _str("__qualname__") + _str("owned") + b"sb."),
        # an object-dtype numpy array
        "numpy_object_dtype": archive(b"\x80\x02" + _global(b"numpy", b"dtype") + b"(" + _str("O")
                                      + b"\x89\x88tR."),
        # one header byte: the central directory's "version needed" of data.pkl becomes 19.8
        "zip_version_19.8": _patch(small, _central_entry(small) + 6, struct.pack("<H", 198)),
        # the end-of-central-directory record points the directory past its real place
        "bad_directory_offset": _patch(small, eocd + 16, struct.pack("<I", eocd + 1000)),
        # a stored storage record claiming 2 GiB uncompressed
        "stored_size_claim": _patch(small, data_entry + 24, struct.pack("<I", 2 << 30)),
    }
    return corpus


# ------------------------------------------------------------------------------------ running cases


def _outcome(fn: Callable[[], object]) -> str:
    try:
        fn()
    except CheckpointError:
        return "refused"
    except Exception as err:  # noqa: BLE001 - anything else is what this harness looks for
        return f"ESCAPED {type(err).__name__}: {str(err)[:200]}"
    return "loaded"


LOAD_PEAKS: list[tuple[int, int]] = []
"""``(file size, peak bytes allocated while loading it)`` of every load, traced by tracemalloc (numpy's
allocations included), so the harness's own copies of the cases do not count."""

PEAK_FACTOR, PEAK_SLACK = 6, 16 << 20
"""A load may allocate at most ``PEAK_FACTOR * file size + PEAK_SLACK``: the storages (at most the file),
their tensors (at most ``VIEW_FACTOR = 4`` times those) and the records' read buffers."""


def load_bytes(data: bytes, workdir: str) -> object:
    path = os.path.join(workdir, "case.pth")
    with open(path, "wb") as f:
        f.write(data)
    before = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    try:
        return load_pth(path)
    finally:
        LOAD_PEAKS.append((len(data), tracemalloc.get_traced_memory()[1] - before))


def parse_config(config: object) -> object:
    """The config parsers a checkpoint's text reaches: official yacs config, vheat_arch.json, meta['cfg']."""
    weights_arch = Arch(dims=8, depths=(1, 1, 2, 1), post_norm=False, layer_scale=None, img_size=64,
                        num_classes=10)
    if isinstance(config, dict):
        arch_from_official_config(config, weights_arch)
    if isinstance(config, str):
        for parse in (Arch.from_json, model_cfg_from_text):
            try:
                parse(config)
            except CheckpointError:
                pass
    return None


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cap_address_space(extra_mb: int) -> None:
    """Caps virtual memory at what the process maps now plus ``extra_mb``: a blow-up becomes a MemoryError."""
    with open("/proc/self/statm") as f:
        mapped = int(f.read().split()[0]) * resource.getpagesize()
    limit = mapped + (extra_mb << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def fuzz(examples: int, derandomize: bool, workdir: str, seeds: list[bytes], outcomes: Counter,
         failures: list[str]) -> None:
    """Hypothesis over byte mutations of valid files (raw, and with a valid CRC) and over config values."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    config_values = st.recursive(
        st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats(allow_nan=True) | st.text(max_size=8),
        lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6),
        max_leaves=30)
    official_key = st.sampled_from(["EMBED_DIM", "DEPTHS", "POST_NORM", "LAYER_SCALE", "PATCH_SIZE", "MLP_RATIO"])
    official = st.builds(lambda fields, size, classes: {"MODEL": {"VHEAT": fields, "NUM_CLASSES": classes},
                                                        "DATA": {"IMG_SIZE": size}},
                         st.dictionaries(official_key, config_values, max_size=6), config_values, config_values)
    arch_json = st.builds(lambda fields: json.dumps(fields), st.dictionaries(
        st.sampled_from(["dims", "depths", "post_norm", "layer_scale", "img_size", "num_classes", "infer_mode",
                         "patch_size", "mlp_ratio", "extra"]), config_values, max_size=10))
    cfg_text = st.builds(lambda inner: f"model = dict(backbone=dict(depths={inner}))",
                         st.text(alphabet="()[]{}-+0123456789,.:'\"dict=", max_size=200))

    def mutate(seed: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
        data = bytearray(seed)
        for position, value in edits:
            data[position % len(data)] = value
        return bytes(data[:cut] if cut else data)

    def mutate_pickle(seed: bytes, edits: list[tuple[int, int]]) -> bytes:
        with zipfile.ZipFile(io.BytesIO(seed)) as zf:
            records = {info.filename: zf.read(info) for info in zf.infolist()}
        name = next(n for n in records if n.endswith("/data.pkl"))
        records[name] = mutate(records[name], edits, None)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:  # a fresh, valid CRC over the edit
            for record_name, raw in records.items():
                zf.writestr(record_name, raw)
        return buffer.getvalue()

    edits = st.lists(st.tuples(st.integers(0, 1 << 24), st.integers(0, 255)), min_size=1, max_size=20)
    case = st.one_of(
        st.builds(lambda s, e, c: ("bytes", mutate(s, e, c)), st.sampled_from(seeds), edits,
                  st.none() | st.integers(1, 1 << 24)),
        st.builds(lambda s, e: ("bytes", mutate_pickle(s, e)), st.sampled_from(seeds), edits),
        st.builds(lambda c: ("config", c), official | arch_json | cfg_text),
    )

    @settings(max_examples=examples, derandomize=derandomize, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case)
    def run_one(kind_and_value):
        kind, value = kind_and_value
        if kind == "bytes":
            result = _outcome(lambda: load_bytes(value, workdir))
        else:
            result = _outcome(lambda: parse_config(value))
        outcomes[result.split(":")[0]] += 1
        if result.startswith("ESCAPED") and len(failures) < 20:
            failures.append(f"fuzz {kind}: {result}")

    run_one()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=200, help="hypothesis examples (0: corpus only)")
    parser.add_argument("--random", action="store_true", help="fresh random examples (default: derandomised)")
    parser.add_argument("--seed-file", action="append", default=[], help="real .pth files to mutate")
    parser.add_argument("--max-rss-mb", type=float, default=400,
                        help="allowed growth of the whole harness's peak RSS (its own copies of cases included)")
    parser.add_argument("--workdir", required=True, help="a scratch directory")
    args = parser.parse_args(argv)

    corpus = regression_corpus()
    seeds = [real_file({"a": np.ones((3, 4), np.float32), "b": {"c": np.arange(5)}})]
    for path in args.seed_file:
        with open(path, "rb") as f:
            seeds.append(f.read())
    baseline = _rss_mb()
    _cap_address_space(extra_mb=int(args.max_rss_mb) + 200)
    tracemalloc.start()

    outcomes: Counter = Counter()
    failures: list[str] = []
    results = {}
    for name, data in corpus.items():
        results[name] = _outcome(lambda data=data: load_bytes(data, args.workdir))
        if results[name] != "refused":
            failures.append(f"corpus {name}: {results[name]}")
    from vheat_jax import torch_io

    if torch_io._inert_getattr.__qualname__ != "_inert_getattr":
        failures.append("corpus getattr_build: the loader's getattr function was modified")
    if args.examples:
        fuzz(args.examples, not args.random, args.workdir, seeds, outcomes, failures)
    growth = _rss_mb() - baseline
    if growth > args.max_rss_mb:
        failures.append(f"peak RSS grew by {growth:.0f} MB, more than {args.max_rss_mb:.0f}")
    over = [(size, peak) for size, peak in LOAD_PEAKS if peak > PEAK_FACTOR * size + PEAK_SLACK]
    if over:
        failures.append(f"{len(over)} load(s) allocated more than {PEAK_FACTOR}x their file + 16 MB, e.g. "
                        f"{over[0][1] >> 20} MB for a {over[0][0]} byte file")
    worst = max(LOAD_PEAKS, key=lambda item: item[1])
    print(json.dumps({"corpus": results, "fuzz_examples": args.examples, "fuzz_outcomes": dict(outcomes),
                      "largest_load_peak_mb": round(worst[1] / 2**20, 1), "its_file_mb": round(worst[0] / 2**20, 2),
                      "peak_rss_growth_mb": round(growth, 1), "failures": failures}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
