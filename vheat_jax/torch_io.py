"""Read and write PyTorch ``.pth`` checkpoints without torch and without running pickled code.

A ``.pth`` file (torch >= 1.6) is a zip archive: ``<dir>/data.pkl`` is a pickle of
the saved object in which every tensor refers, through a pickle "persistent id",
to raw little-endian bytes stored in ``<dir>/data/<key>``. An ordinary unpickler
(``torch.load(weights_only=False)``) imports and calls whatever the pickle names,
so loading an untrusted checkpoint that way can run arbitrary code.

Security model of :func:`load_pth`. Nothing named in the file is ever imported or
called; every global the pickle names is looked up in tables of this module:

* **Rebuilt** by this module's own code, from validated arguments: tensors
  (``torch._utils._rebuild_tensor_v2`` / ``_v3``, ``_rebuild_parameter``,
  ``_rebuild_parameter_with_state``, the ``torch.*Storage`` types) become numpy
  arrays copied out of the raw storage bytes; ``collections.OrderedDict``,
  ``set``, ``frozenset``, ``slice``, ``complex``, ``bytes``/``bytearray`` and
  numpy scalars, dtypes and arrays (checkpoints often store ``epoch`` or
  ``max_accuracy`` as numpy scalars) are rebuilt too.
* **Inert**: any other class that the pickle only instantiates the way pickle
  restores plain objects (``cls.__new__(cls)`` then SETITEMS / BUILD; that is how
  a ``yacs.config.CfgNode`` is stored) becomes an :class:`OpaqueObject`, a dict
  that records the class name, the items and the BUILD state.
* **Refused** with :class:`UnsafeCheckpointError`: any global of a module or
  builtin that can run code (``os``, ``subprocess``, ``builtins.eval``, ...), and
  any *call* of a global that is not rebuilt above, since calling a global is how
  a malicious pickle runs code.

Resource model: what the file *says* never decides how much memory is used.
Before unpickling, a pass over the pickle's opcodes (:func:`_check_opcodes`)
refuses memo indices beyond the number of opcodes read, declared lengths beyond
the stream's end, more than :data:`MAX_NESTING` open MARKs, and the opcodes
torch never writes (protocol-5 buffers, extension codes). Records must be
stored uncompressed, as ``torch.save`` writes them (a compressed record can
claim any inflated size), ``data.pkl`` is at most :data:`MAX_PICKLE_BYTES`, and
the storages read together never exceed the archive's own size (overlapping zip
entries are refused that way). Each storage may be materialised into tensors at
most :data:`VIEW_FACTOR` times over (stride-0 and overlapping views count at their
full size), so a load's peak memory stays below about ``(1 + VIEW_FACTOR)`` times
the file's size. The loaded tree may nest at most :data:`MAX_NESTING` deep.

:func:`save_pth` writes the layout torch 2.x writes, loadable by
``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import struct
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np

from vheat_jax.errors import CheckpointError, UnsafeCheckpointError
from vheat_jax.paths import as_path, check_regular_file, is_remote

__all__ = ["CheckpointError", "UnsafeCheckpointError", "OpaqueObject", "load_pth", "save_pth"]

MAX_PICKLE_BYTES = 64 << 20
"""Largest ``data.pkl`` read (the official vHeat-B checkpoint's is 0.2 MB: tensors live in their own records)."""

MAX_NESTING = 100
"""Deepest nesting of containers (and of open MARKs) a checkpoint may have; real ones nest fewer than 10."""

VIEW_FACTOR = 4
"""How many times over the tensors of one storage may materialise its elements (tied weights share a storage;
a stride-0 view of 16 bytes could otherwise claim gigabytes)."""


class OpaqueObject(dict):
    """Inert stand-in for an instance of a class this module does not know (e.g. ``yacs.config.CfgNode``).

    Holds the items the pickle stored into the object (so nested configs read as
    ``ckpt["config"]["MODEL"]["VHEAT"]["DEPTHS"]``), the class's ``module`` and
    ``qualname``, and ``state``, the argument of the pickle's BUILD (an object's
    ``__dict__``); the class itself is never imported.
    """

    def __init__(self, module: str, qualname: str, items: Mapping | Iterable = (), state: Any = None) -> None:
        super().__init__(items)
        self.module = module
        self.qualname = qualname
        self.state = state

    def __setstate__(self, state: Any) -> None:
        """Pickle's BUILD: record the state instead of applying it to a real object."""
        self.state = state

    def __reduce__(self) -> tuple:
        """Copies and pickles go through the constructor, so they do not mistake our attributes for BUILD state."""
        return OpaqueObject, (self.module, self.qualname, dict(self), self.state)

    def __repr__(self) -> str:
        return f"OpaqueObject({self.module}.{self.qualname}, {dict.__repr__(self)})"


# ---------------------------------------------------------------------------------------------
# dtypes

_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "ComplexDoubleStorage": np.dtype(np.complex128),
}
"""The typed storage classes torch names in persistent ids, and what their bytes hold."""

_STORAGE_BY_DTYPE: dict[np.dtype, str] = {dtype: name for name, dtype in _STORAGE_DTYPES.items()}

_TORCH_DTYPES: dict[str, np.dtype] = {
    dtype.name: dtype  # numpy's names are torch's: float32, bfloat16, int64, bool, ...
    for dtype in (*_STORAGE_DTYPES.values(), np.dtype(np.uint16), np.dtype(np.uint32), np.dtype(np.uint64),
                  np.dtype(ml_dtypes.float8_e4m3fn), np.dtype(ml_dtypes.float8_e5m2))
}
"""The dtype globals (``torch.uint16``, ...) of ``_rebuild_tensor_v3``, which torch writes for dtypes that
have no typed storage class, together with an untyped (byte) storage."""


class _TorchDtype(NamedTuple):
    """What ``torch.FloatStorage`` or ``torch.uint16`` stands for. A NamedTuple, so BUILD cannot modify it."""

    name: str
    dtype: np.dtype


class _UnreadStorage(NamedTuple):
    """A storage a layout-only load (``load_pth(..., tensors=False)``) does not read: its element type only."""

    dtype: np.dtype


class _Storage(NamedTuple):
    """A storage read from ``data/<key>``: a read-only 1-D little-endian array over the record's bytes.

    ``charge(n)`` counts ``n`` more elements materialised from it against its :data:`VIEW_FACTOR` budget.
    """

    data: np.ndarray
    charge: Callable[[int], None]


# ---------------------------------------------------------------------------------------------
# rebuild functions for the allowed globals

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not (isinstance(value, tuple) and all(_is_int(v) and v >= 0 for v in value)):
        raise CheckpointError(f"tensor {what} must be a tuple of non-negative ints, got {value!r:.80}")
    return value


def _tensor_from_storage(storage: Any, offset: Any, size: Any, stride: Any, dtype: np.dtype | None) -> np.ndarray:
    """The tensor ``storage[offset:]`` viewed with ``size``/``stride`` (in elements), as a new contiguous array.

    Bounds are checked before ``as_strided``, which would otherwise read past the
    storage. ``dtype`` reinterprets an untyped (byte) storage; None keeps the storage's.
    """
    if isinstance(storage, _UnreadStorage):  # the shape and dtype, no bytes: a zero-stride placeholder
        placeholder = np.zeros((), (dtype or storage.dtype).newbyteorder("="))
        return np.broadcast_to(placeholder, _int_tuple(size, "size"))
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"tensor rebuilt from {type(storage).__name__}, not from a storage record")
    data = storage.data
    if dtype is not None:
        if data.nbytes % dtype.itemsize:
            raise CheckpointError(f"storage of {data.nbytes} bytes does not hold whole {dtype} elements")
        data = data.view(dtype.newbyteorder("<"))
    shape, strides = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if not _is_int(offset) or offset < 0 or len(shape) != len(strides):
        raise CheckpointError(f"bad tensor layout: offset {offset!r:.40}, size {shape}, stride {strides}")
    native = data.dtype.newbyteorder("=")
    if 0 in shape:
        return np.empty(shape, native)
    storage.charge(int(np.prod(shape, dtype=object)) * data.itemsize)
    last = offset + sum((n - 1) * s for n, s in zip(shape, strides))
    if last >= data.size:
        raise CheckpointError(f"tensor of size {shape} (offset {offset}, stride {strides}) runs past the end "
                              f"of its storage of {data.size} elements; the file is corrupt")
    view = np.lib.stride_tricks.as_strided(
        data[offset:], shape, tuple(s * data.itemsize for s in strides), writeable=False)
    return view.astype(native)


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                       backward_hooks: Any = None, metadata: Any = None) -> np.ndarray:
    return _tensor_from_storage(storage, offset, size, stride, None)


def _rebuild_tensor_v3(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any,
                       backward_hooks: Any, dtype: Any, metadata: Any = None) -> np.ndarray:
    if not isinstance(dtype, _TorchDtype):
        raise CheckpointError(f"_rebuild_tensor_v3 with dtype {dtype!r:.60}, not a supported torch dtype")
    return _tensor_from_storage(storage, offset, size, stride, dtype.dtype)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None,
                       state: Any = None) -> np.ndarray:
    """An ``nn.Parameter`` is its data; autograd flags, hooks and extra attributes are dropped."""
    if not isinstance(data, np.ndarray):
        raise CheckpointError(f"parameter rebuilt from {type(data).__name__}, not from a tensor")
    return data


def _bytes_args(kind: str, args: tuple) -> tuple:
    """Allows the argument forms pickle writes for bytes: none, bytes, or (text, 'latin1').

    An int argument would allocate that many bytes, and another encoding would
    make Python look up (import) a codec; both are refused.
    """
    if args == () or (len(args) == 1 and isinstance(args[0], (bytes, bytearray))):
        return args
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
        return args
    raise CheckpointError(f"{kind}() with unsupported arguments {args!r:.80}")


def _bytes(*args: Any) -> bytes:
    return bytes(*_bytes_args("bytes", args))


def _bytearray(*args: Any) -> bytearray:
    return bytearray(*_bytes_args("bytearray", args))


def _codecs_encode(*args: Any) -> bytes:
    """Protocol-2 pickles store ``bytes`` as ``_codecs.encode(text, 'latin1')``."""
    text, encoding = _bytes_args("_codecs.encode", args)
    return text.encode(encoding)


def _numpy_dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    if not isinstance(spec, str) or len(spec) > 8:
        raise CheckpointError(f"numpy.dtype from {spec!r:.40}, not from a short type code")
    dtype = np.dtype(spec, bool(align), bool(copy))
    if dtype.hasobject or dtype.kind == "V":
        raise CheckpointError(f"numpy dtype {spec!r} holds objects or raw records; only numbers are read")
    return dtype


def _numpy_scalar(dtype: Any, data: Any = None) -> np.generic:
    if not (isinstance(dtype, np.dtype) and not dtype.hasobject
            and isinstance(data, bytes) and len(data) == dtype.itemsize):
        raise CheckpointError(f"malformed numpy scalar of dtype {dtype!r:.40}")
    return np.frombuffer(data, dtype)[0]


class _Marker(NamedTuple):
    """A global that may only be passed as an argument, never called (nor modified: a NamedTuple)."""

    name: str


_NDARRAY = _Marker("numpy.ndarray")
"""What ``numpy.ndarray`` resolves to: pickled arrays pass it to ``_reconstruct``."""


def _numpy_reconstruct(subtype: Any, shape: Any = None, dtype: Any = None) -> np.ndarray:
    """An empty plain ndarray; the pickle's BUILD (``ndarray.__setstate__``) then sets its dtype, shape and data."""
    if subtype is not _NDARRAY:
        raise CheckpointError(f"numpy array of class {subtype!r:.60} (only plain ndarrays are rebuilt)")
    return np.empty(0, np.uint8)


def _copyreg_reconstructor(cls: Any, base: Any, state: Any) -> OpaqueObject:
    """How protocol 0/1 pickles restore plain objects; only ever yields an OpaqueObject."""
    if not isinstance(cls, _InertClass):
        raise CheckpointError(f"copyreg._reconstructor of {cls!r:.60} is not supported")
    obj = OpaqueObject(cls.module, cls.qualname)
    if isinstance(state, dict):
        obj.update(state)
    return obj


class _SafeCall(NamedTuple):
    """An allowed global that pickle may call: runs one of the functions above.

    Pickle's BUILD can set attributes of any object it has; a NamedTuple has none
    to set, so a file cannot tamper with these module-level functions.
    """

    fn: Callable[..., Any]

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


_NUMPY_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")  # numpy 1.x and 2.x pickles

_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _SafeCall(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_tensor_v3"): _SafeCall(_rebuild_tensor_v3),
    ("torch._utils", "_rebuild_parameter"): _SafeCall(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _SafeCall(_rebuild_parameter),
    ("torch.storage", "UntypedStorage"): _TorchDtype("UntypedStorage", np.dtype(np.uint8)),
    **{("torch", name): _TorchDtype(name, dtype) for name, dtype in {**_STORAGE_DTYPES, **_TORCH_DTYPES}.items()},
    ("collections", "OrderedDict"): OrderedDict,  # builtin types are immutable, so returned as they are
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "bytes"): _SafeCall(_bytes),
    ("builtins", "bytearray"): _SafeCall(_bytearray),
    ("_codecs", "encode"): _SafeCall(_codecs_encode),
    ("copyreg", "_reconstructor"): _SafeCall(_copyreg_reconstructor),
    ("numpy", "dtype"): _SafeCall(_numpy_dtype),
    ("numpy", "ndarray"): _NDARRAY,
    **{(module, "scalar"): _SafeCall(_numpy_scalar) for module in _NUMPY_MULTIARRAY},
    **{(module, "_reconstruct"): _SafeCall(_numpy_reconstruct) for module in _NUMPY_MULTIARRAY},
}
"""Every global :func:`load_pth` resolves to something usable, by ``(module, name)``."""

_MODULE_ALIASES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
"""Python 2 module names, which protocol-2 pickles use."""

_CODE_RUNNING_MODULES = frozenset({
    "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "sys", "shutil", "socket", "importlib", "pickle",
    "_pickle", "marshal", "types", "runpy", "pty", "code", "codeop", "functools", "operator", "_operator", "io",
    "_io", "ctypes", "webbrowser", "multiprocessing", "threading", "_thread", "signal", "asyncio", "tempfile",
    "pathlib", "glob", "pdb", "bdb", "timeit", "trace", "inspect", "gc", "weakref", "platform", "copyreg",
    "zipimport", "pkgutil", "site", "sysconfig", "distutils", "setuptools", "pip", "commands", "popen2",
})
"""Modules whose globals can run code or touch the system; any use of one is refused."""

_CODE_RUNNING_BUILTINS = frozenset({
    "eval", "exec", "compile", "open", "getattr", "setattr", "delattr", "__import__", "globals", "locals", "vars",
    "input", "breakpoint", "help", "exit", "quit", "memoryview",
})


def _refusal(action: str, name: str) -> UnsafeCheckpointError:
    """The error for a pickle that reaches for code; :func:`load_pth` prefixes the file name."""
    return UnsafeCheckpointError(f"its pickle {action} {name}, which could run code; only tensors and plain "
                                 "containers are rebuilt (this loader never executes pickled code)")


class _InertClass(type):
    """Metaclass of the stand-ins for unknown globals.

    Instantiating a stand-in the way pickle restores plain objects (NEWOBJ, which
    calls ``cls.__new__(cls)``) yields an :class:`OpaqueObject`; calling it (REDUCE)
    is refused, and so is setting its attributes (BUILD on the class itself).
    """

    module: str
    qualname: str

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise _refusal("calls", f"{cls.module}.{cls.qualname}")

    def __setattr__(cls, name: str, value: Any) -> None:
        raise _refusal("modifies", f"{cls.module}.{cls.qualname}")

    def __repr__(cls) -> str:
        return f"<not imported: {cls.module}.{cls.qualname}>"


def _inert_class(module: str, qualname: str) -> _InertClass:
    def new(cls: _InertClass, *args: Any, **kwargs: Any) -> OpaqueObject:
        return OpaqueObject(cls.module, cls.qualname)

    namespace = {"module": module, "qualname": qualname, "__new__": new}
    return _InertClass(qualname, (), namespace)


def _inert_getattr(obj: Any, name: Any) -> _InertClass:
    """``getattr`` restricted to stand-ins: names an attribute of a class that is never imported.

    mmengine checkpoints pickle bound methods such as ``getattr(HistoryBuffer, 'min')``
    (in their ``message_hub``); the result is another inert stand-in. On anything
    real (an allowed function, a container) getattr could reach code, so it is refused.
    """
    if not isinstance(obj, _InertClass) or not isinstance(name, str):
        raise _refusal("calls", f"builtins.getattr on {type(obj).__name__}")
    return _inert_class(obj.module, f"{obj.qualname}.{name}")


_INERT_GETATTR = _SafeCall(_inert_getattr)
"""What ``builtins.getattr`` resolves to: a NamedTuple around the function, so BUILD cannot reach the function."""


# ---------------------------------------------------------------------------------------------
# reading

_CORRUPTION_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
                      AttributeError, struct.error, OverflowError, zipfile.BadZipFile, zlib.error,
                      NotImplementedError, RuntimeError, OSError, RecursionError)
"""What malformed pickle or zip data raises inside the stdlib (NotImplementedError: an unknown zip version
or compression; OSError: a header offset before the file's start); reported as CheckpointError."""

_UNWRITTEN_OPCODES = frozenset({"NEXT_BUFFER", "READONLY_BUFFER", "BYTEARRAY8", "EXT1", "EXT2", "EXT4"})
"""Opcodes torch never writes: out-of-band buffers (protocol 5) and the copyreg extension registry."""

_MEMO_OPCODES = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"})


def _check_opcodes(data: bytes) -> None:
    """Refuses, before unpickling, what would make the unpickler allocate more than the stream holds.

    ``pickletools.genops`` reads every opcode's argument without building anything;
    a declared length beyond the end of the stream fails there. A memo index can
    exceed neither the number of opcodes so far (each entry takes one) nor is
    allocated otherwise: the C unpickler grows its memo table to the index given.
    """
    marks = 0
    for count, (opcode, arg, _pos) in enumerate(pickletools.genops(data)):
        if opcode.name in _UNWRITTEN_OPCODES:
            raise CheckpointError(f"its pickle uses {opcode.name}, which torch.save never writes")
        if opcode.name in _MEMO_OPCODES and not 0 <= arg <= count:
            raise CheckpointError(f"its pickle's {opcode.name} names memo entry {arg} after {count} opcodes; "
                                  "the file is corrupt")
        if opcode.name == "MARK":
            marks += 1
            if marks > MAX_NESTING:
                raise CheckpointError(f"its pickle nests more than {MAX_NESTING} levels deep")
        elif pickletools.markobject in opcode.stack_before:
            marks -= 1


def _children(obj: Any) -> Iterable[Any] | None:
    if isinstance(obj, OpaqueObject):
        return (*obj.keys(), *obj.values(), obj.state)
    if isinstance(obj, dict):
        return (*obj.keys(), *obj.values())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return obj
    return None


def _check_nesting(obj: Any, depth: int = 0, heights: dict[int, int] | None = None,
                   active: set[int] | None = None) -> int:
    """The height of ``obj``'s tree; refuses one deeper than :data:`MAX_NESTING` or that contains itself.

    Heights are memoised by identity, so shared sub-trees (the memo lets a small
    pickle reference one object many times) are walked once.
    """
    heights = {} if heights is None else heights
    active = set() if active is None else active
    children = _children(obj)
    if children is None:
        return 0
    key = id(obj)
    if key not in heights:
        if key in active:
            raise CheckpointError("its pickle builds a container that contains itself")
        if depth >= MAX_NESTING:
            raise CheckpointError(f"its data nests more than {MAX_NESTING} levels deep")
        active.add(key)
        heights[key] = 1 + max((_check_nesting(c, depth + 1, heights, active) for c in children), default=0)
        active.discard(key)
    if depth + heights[key] > MAX_NESTING:
        raise CheckpointError(f"its data nests more than {MAX_NESTING} levels deep")
    return heights[key]


class _Archive:
    """The records of one checkpoint zip, found under its top-level directory (whatever its name).

    Reads are bounded by the archive, not by what its headers claim: see the
    module's resource model.
    """

    def __init__(self, zf: zipfile.ZipFile, archive_bytes: int, *, read_tensors: bool = True) -> None:
        self._zf = zf
        self._read_tensors = read_tensors
        self._infos = {info.filename: info for info in zf.infolist()}
        if len(self._infos) != len(zf.infolist()):  # torch.load reads the first of two, zipfile the last
            twice = sorted(name for name, count in collections.Counter(zf.namelist()).items() if count > 1)
            raise CheckpointError(f"the zip archive names {', '.join(twice[:3])} more than once; readers disagree "
                                  "on which copy counts, so the file is refused")
        pickles = [n for n in self._infos if n.count("/") == 1 and n.endswith("/data.pkl")]
        if not pickles:
            raise CheckpointError("a zip archive but not a PyTorch checkpoint (it has no <dir>/data.pkl)")
        self._prefix = pickles[0][: -len("data.pkl")]
        if self._prefix + "constants.pkl" in self._infos:
            raise CheckpointError("a TorchScript archive (torch.jit.save), not a checkpoint; "
                                  "save its state_dict() with torch.save and load that")
        self._storages: dict[str, _Storage] = {}
        self._unread_bytes = archive_bytes  # what the storages read so far leave of the archive
        self._view_budget: dict[str, int] = {}

    def _info(self, name: str) -> zipfile.ZipInfo:
        info = self._infos.get(self._prefix + name)
        if info is None:
            raise CheckpointError(f"record {self._prefix + name} is missing; the file is truncated or corrupt")
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"record {info.filename} is compressed (zip method {info.compress_type}); "
                                  "torch.save stores records uncompressed: re-save the checkpoint with torch.save")
        if info.file_size != info.compress_size:
            raise CheckpointError(f"record {info.filename} claims {info.file_size} bytes but stores "
                                  f"{info.compress_size}; the file is corrupt")
        return info

    def record(self, name: str, limit: int) -> bytes:
        """The bytes of ``<prefix><name>``, refused if it claims more than ``limit`` bytes; CRC-checked."""
        info = self._info(name)
        if info.file_size > limit:
            raise CheckpointError(f"record {info.filename} claims {info.file_size} bytes, more than the {limit} "
                                  "this reader allows for it")
        with self._zf.open(info) as f:
            data = f.read(info.file_size)  # reading to the record's end makes zipfile check its CRC
        if len(data) != info.file_size:
            raise CheckpointError(f"record {info.filename} is truncated")
        return data

    def check_byteorder(self) -> None:
        """Storages are read as little-endian; a file saved on a big-endian machine says so here and is refused."""
        if self._prefix + "byteorder" in self._infos:
            order = self.record("byteorder", 16).decode("ascii", "replace")
            if order != "little":
                raise CheckpointError(f"tensors stored in {order!r} byte order; only "
                                      "little-endian checkpoints are supported (re-save it on a little-endian machine)")

    def storage(self, pid: Any) -> _Storage:
        """Resolves a persistent id ``('storage', storage type, key, location, numel)``; shared keys read once."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _TorchDtype)
                and isinstance(pid[2], str) and _is_int(pid[4]) and pid[4] >= 0):
            raise CheckpointError(f"unsupported persistent id {pid!r:.100}")
        _, storage_type, key, _location, numel = pid
        if not self._read_tensors:
            return _UnreadStorage(storage_type.dtype)
        if key not in self._storages:
            self._storages[key] = self._read_storage(key)
        data = self._storages[key].data
        dtype = storage_type.dtype.newbyteorder("<")
        if numel * dtype.itemsize > data.nbytes:
            raise CheckpointError(f"storage data/{key} has {data.nbytes} bytes, fewer than its "
                                  f"{numel} {storage_type.name} elements need; the file is truncated or corrupt")
        return self._storages[key]._replace(data=data.view(np.uint8)[: numel * dtype.itemsize].view(dtype))

    def _read_storage(self, key: str) -> _Storage:
        info = self._info(f"data/{key}")
        if info.compress_size > self._unread_bytes:
            raise CheckpointError(f"storage records add up to more bytes than the file holds (at data/{key}); "
                                  "its zip entries overlap: the file is corrupt or crafted")
        self._unread_bytes -= info.compress_size
        raw = self.record(f"data/{key}", info.file_size)
        self._view_budget[key] = VIEW_FACTOR * len(raw)

        def charge(nbytes: int) -> None:
            self._view_budget[key] -= nbytes
            if self._view_budget[key] < 0:
                raise CheckpointError(f"the tensors over storage data/{key} ({len(raw)} bytes) would materialise "
                                      f"more than {VIEW_FACTOR} times its size (stride-0 or overlapping views); "
                                      "refused")

        return _Storage(np.frombuffer(raw, np.uint8), charge)

    def pickle_bytes(self) -> bytes:
        data = self.record("data.pkl", MAX_PICKLE_BYTES)
        _check_opcodes(data)
        return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` resolving globals only through :data:`_SAFE_GLOBALS` and inert stand-ins."""

    def __init__(self, archive: _Archive) -> None:
        super().__init__(io.BytesIO(archive.pickle_bytes()))
        self._archive = archive
        self._inert: dict[tuple[str, str], _InertClass] = {}

    def find_class(self, module: str, name: str) -> Any:
        module = _MODULE_ALIASES.get(module, module)
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[module, name]
        if (module, name) == ("builtins", "getattr"):
            return _INERT_GETATTR
        if module.split(".")[0] in _CODE_RUNNING_MODULES or (module == "builtins" and name in _CODE_RUNNING_BUILTINS):
            raise _refusal("uses", f"{module}.{name}")
        if (module, name) not in self._inert:
            self._inert[module, name] = _inert_class(module, name)
        return self._inert[module, name]

    def persistent_load(self, pid: Any) -> _Storage | _UnreadStorage:
        return self._archive.storage(pid)


def _not_a_zip_message(source: str, head: bytes) -> str:
    """Says what a file that is not a readable zip archive most likely is, and what to do about it."""
    if not head:
        return f"{source} is empty (0 bytes); it was probably not fully written or downloaded"
    if head.startswith(b"PK"):
        return f"{source} is a truncated or corrupt zip archive; download or save it again"
    if head.startswith(b"\x80") or head[257:262] == b"ustar":
        return (f"{source} is a legacy PyTorch checkpoint (the non-zip format of torch < 1.6), which this loader "
                "does not read; re-save it with torch >= 1.6 (torch.save(torch.load(path), new_path), in an "
                "environment you trust)")
    return f"{source} is not a PyTorch checkpoint (torch >= 1.6 writes zip archives; this is not one)"


def load_pth(path: str | os.PathLike, *, tensors: bool = True) -> Any:
    """Reads a ``.pth`` checkpoint into plain Python containers and numpy arrays, executing nothing.

    Tensors become contiguous numpy arrays of the same dtype (bfloat16 as
    ``ml_dtypes.bfloat16``); instances of unknown classes become
    :class:`OpaqueObject`. With ``tensors=False`` only ``data.pkl`` is read: each
    tensor is a read-only zero-stride placeholder of its shape and dtype, so the
    keys, shapes and dtypes cost no storage bytes (how a checkpoint's kind is told
    before it is read once). Raises :class:`UnsafeCheckpointError` if the pickle
    tries to run code, :class:`CheckpointError` for anything else it cannot read,
    including a file whose claims exceed the bounds of the module's resource model.
    """
    source = os.fspath(path)
    check_regular_file(source, "checkpoint")
    with as_path(source).open("rb") as f:  # local or gs://
        head = f.read(512)
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        try:
            zf = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, struct.error, NotImplementedError):
            raise CheckpointError(_not_a_zip_message(source, head)) from None
        return _load_archive(zf, size, source, read_tensors=tensors)


def _load_archive(zf: zipfile.ZipFile, size: int, source: str, *, read_tensors: bool) -> Any:
    with zf:
        try:
            archive = _Archive(zf, size, read_tensors=read_tensors)
            archive.check_byteorder()
            loaded = _RestrictedUnpickler(archive).load()
            _check_nesting(loaded)
            return loaded
        except UnsafeCheckpointError as err:
            raise UnsafeCheckpointError(f"refusing to load {source}: {err}") from None
        except CheckpointError as err:
            raise CheckpointError(f"{source}: {err}") from None
        except _CORRUPTION_ERRORS as err:
            raise CheckpointError(f"{source} is corrupt or not a torch checkpoint: its data.pkl could not be "
                                  f"read ({type(err).__name__}: {err})") from None


# ---------------------------------------------------------------------------------------------
# writing

_PREFIX = "archive/"
_ALIGNMENT = 64
"""torch 2.x starts every record's data at a multiple of 64 bytes (and writes ``.storage_alignment``)."""

_PADDING_EXTRA_ID = 0x4246
"""Zip "extra field" id ``'FB'``, which torch's writer pads local headers with to align record data."""


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _encode_int(value: int) -> bytes:
    if 0 <= value < 1 << 8:
        return b"K" + struct.pack("<B", value)
    if 0 <= value < 1 << 16:
        return b"M" + struct.pack("<H", value)
    if -(1 << 31) <= value < 1 << 31:
        return b"J" + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    if len(raw) < 256:
        return b"\x8a" + struct.pack("<B", len(raw)) + raw
    return b"\x8b" + struct.pack("<i", len(raw)) + raw


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major strides in elements, computed as torch does (a 0-size dim counts as 1)."""
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


class _PickleWriter:
    """Emits the protocol-2 pickle ``torch.save`` writes for a tree of containers and arrays.

    Written opcode by opcode because the stdlib pickler only writes a GLOBAL for a
    name it can import, and this module must not import torch. No memo is used:
    the unpickler does not need one.
    """

    def __init__(self) -> None:
        self._out = bytearray()
        self.storages: list[np.ndarray] = []

    def dump(self, obj: Any) -> bytes:
        self._out += b"\x80\x02"
        self._write(obj)
        self._out += b"."
        return bytes(self._out)

    def _write(self, obj: Any) -> None:
        if obj is None:
            self._out += b"N"
        elif isinstance(obj, bool):
            self._out += b"\x88" if obj else b"\x89"
        elif isinstance(obj, int):
            self._out += _encode_int(obj)
        elif isinstance(obj, float):
            self._out += b"G" + struct.pack(">d", obj)
        elif isinstance(obj, str):
            raw = obj.encode("utf-8", "surrogatepass")
            self._out += b"X" + struct.pack("<I", len(raw)) + raw
        elif isinstance(obj, np.ndarray):
            self._write_tensor(obj)
        elif isinstance(obj, OpaqueObject):
            raise TypeError(f"save_pth cannot write an OpaqueObject ({obj.module}.{obj.qualname}); "
                            "convert it to a dict first")
        elif isinstance(obj, dict):
            self._out += _global("collections", "OrderedDict") + b")R" if isinstance(obj, OrderedDict) else b"}"
            self._write_marked([item for pair in obj.items() for item in pair], b"u")  # SETITEMS
        elif isinstance(obj, list):
            self._out += b"]"
            self._write_marked(obj, b"e")  # APPENDS
        elif isinstance(obj, tuple):
            if obj:
                self._write_marked(obj, b"t")  # TUPLE
            else:
                self._out += b")"
        else:
            raise TypeError(f"save_pth cannot write {type(obj).__name__}: only dicts, lists, tuples, numpy arrays, "
                            "str, int, float, bool and None (use .item() for numpy scalars)")

    def _write_marked(self, items: list | tuple, opcode: bytes) -> None:
        """MARK, the items, then ``opcode``, which consumes everything back to the MARK; nothing if no items."""
        if items:
            self._out += b"("
            for item in items:
                self._write(item)
            self._out += opcode

    def _write_tensor(self, array: np.ndarray) -> None:
        """``_rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())`` over a new storage record."""
        storage_name = _STORAGE_BY_DTYPE.get(array.dtype.newbyteorder("="))
        if storage_name is None:
            raise TypeError(f"save_pth cannot write arrays of dtype {array.dtype}; supported: "
                            + ", ".join(str(d) for d in _STORAGE_BY_DTYPE))
        array = np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C")
        key = str(len(self.storages))
        self.storages.append(array)
        self._out += _global("torch._utils", "_rebuild_tensor_v2") + b"(("  # args tuple, then persistent id
        self._write("storage")
        self._out += _global("torch", storage_name)
        self._write(key)
        self._write("cpu")
        self._write(array.size)
        self._out += b"tQ"  # TUPLE, BINPERSID
        self._write(0)
        self._write(array.shape)
        self._write(_contiguous_strides(array.shape))
        self._write(False)
        self._out += _global("collections", "OrderedDict") + b")R" + b"tR"


def _write_record(zf: zipfile.ZipFile, f: io.BufferedWriter, name: str, payload: bytes | np.ndarray) -> None:
    """Stores one record with its data aligned as torch aligns it (padding in the local header's extra field)."""
    data = payload if isinstance(payload, bytes) else payload.reshape(-1).view(np.uint8)
    zip64 = len(data) > zipfile.ZIP64_LIMIT  # zipfile then adds a 20-byte zip64 field to the local header
    header_size = 30 + len(name.encode()) + 4 + (20 if zip64 else 0)
    pad = -(f.tell() + header_size) % _ALIGNMENT
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.extra = struct.pack("<HH", _PADDING_EXTRA_ID, pad) + bytes(pad)
    with zf.open(info, "w", force_zip64=zip64) as out:
        out.write(data)


def save_pth(obj: Any, path: str | os.PathLike) -> None:
    """Writes ``obj`` (nested dicts/OrderedDicts/lists/tuples of numpy arrays and scalars) as torch 2.x would.

    Arrays become tensors of the same dtype and shape (made contiguous, one storage
    each); the file loads with ``torch.load(path, weights_only=True)``.
    """
    writer = _PickleWriter()
    data_pkl = writer.dump(obj)
    records: list[tuple[str, bytes | np.ndarray]] = [
        ("data.pkl", data_pkl),
        (".format_version", b"1"),
        (".storage_alignment", str(_ALIGNMENT).encode()),
        ("byteorder", b"little"),
        *((f"data/{key}", array) for key, array in enumerate(writer.storages)),
        ("version", b"3\n"),
    ]
    if is_remote(path):  # object stores take whole objects: build the file in memory, then upload it
        buffer = io.BytesIO()
        _write_records(buffer, records)
        as_path(path).write_bytes(buffer.getvalue())
        return
    with open(path, "wb") as f:
        _write_records(f, records)


def _write_records(f, records) -> None:
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
        for name, payload in records:
            _write_record(zf, f, _PREFIX + name, payload)
