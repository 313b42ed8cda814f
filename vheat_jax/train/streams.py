"""The grain plumbing every task's loader shares: worker processes, the augmented training shard, eval shards.

* :func:`to_iter_dataset`: read threads and prefetch, plus worker processes that leave
  SIGTERM / Ctrl-C to the trainer (it saves, then stops them through grain);
* :func:`iterating`: ``iter(loader)`` closed on leaving, also when evaluation is interrupted;
* :func:`augmented_process_shard`: this process's share of the endless, per-epoch reshuffled
  training stream, each example augmented with an rng seeded by its global position, so a
  run on P processes augments every example as a run on one does;
* :func:`eval_shard_bounds`: each process's contiguous share of an evaluation split.

Classification (:mod:`vheat_jax.cls.data`) and segmentation (:mod:`vheat_jax.seg.data`)
build their loaders from these; detection's loader uses threads and shares the shard bounds.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import multiprocessing
import signal

import grain
import numpy as np

# Host-side read-ahead: batches in flight per (worker) process.  Kept small:
# a train batch is uint8 (256 x 224 x 224 x 3 = 39 MB), an eval batch float32 (154 MB).
_READ_THREADS = 2
_PREFETCH_BATCHES = 2
_WORKER_BUFFER_BATCHES = 1

# Purpose tags for the derived seeds (classification's mixup draw uses 3: vheat_jax.cls.data).
_SHUFFLE, _AUGMENT = 1, 2

_GRAIN_WORKER_NAME = "grain-process-prefetch"  # grain 0.2's name for its worker processes


def _derive_seed(*parts: int) -> int:
    """A 32-bit seed from integer parts (numpy SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _ensure_absl_flags_parsed() -> None:
    """grain reads absl flags (also in its worker processes); a program that
    never called ``absl.app.run`` would fail with UnparsedFlagAccessError."""
    from absl import flags  # pylint: disable=import-outside-toplevel

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _leave_signals_to_parent(worker_index: int, worker_count: int) -> None:
    """grain worker init: SIGTERM and Ctrl-C reach the whole process group (a terminal, Slurm's
    ``scancel``, ``timeout``); a worker that died of them would fail the loader before the parent
    saved. The parent decides (save, then stop its workers through grain), so workers ignore both."""
    del worker_index, worker_count
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@functools.cache
def _kill_leftover_workers_at_exit() -> None:
    """multiprocessing's exit hook stops daemonic children with SIGTERM, which the workers ignore; the
    loops close their loaders, and this (run before that hook) kills any a crash left behind."""
    def kill_workers() -> None:
        for child in multiprocessing.active_children():
            if child.name.startswith(_GRAIN_WORKER_NAME):
                child.kill()

    atexit.register(kill_workers)


def to_iter_dataset(ds: grain.MapDataset, num_workers: int) -> grain.IterDataset:
    """The loader: read threads and prefetch, plus ``num_workers`` worker processes when > 0."""
    _ensure_absl_flags_parsed()
    it = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=_READ_THREADS, prefetch_buffer_size=_PREFETCH_BATCHES)
    )
    if num_workers > 0:
        _kill_leftover_workers_at_exit()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=int(num_workers), per_worker_buffer_size=_WORKER_BUFFER_BATCHES
            ),
            worker_init_fn=_leave_signals_to_parent,
        )
    return it


@contextlib.contextmanager
def iterating(loader):
    """``iter(loader)``, closed on leaving (its worker processes stopped in order, also when evaluation
    is interrupted)."""
    iterator = iter(loader)
    try:
        yield iterator
    finally:
        if hasattr(iterator, "close"):
            iterator.close()


class AugmentAtGlobalPosition(grain.transforms.MapWithIndex):
    """Per-example augmentation (``transform.random_map(element, rng)``) seeded by the
    example's position in the global stream.

    Process p of P sees global positions p, p + P, p + 2P, ...; seeding by that
    position (not by p and the local index) makes a run on P processes augment
    every example exactly as a run on one process does.
    """

    def __init__(self, transform, seed: int, process_index: int, process_count: int):
        self.transform = transform
        self.seed, self.process_index, self.process_count = int(seed), int(process_index), int(process_count)

    def map_with_index(self, index: int, element: dict) -> dict:
        position = int(index) * self.process_count + self.process_index
        return self.transform.random_map(element, np.random.default_rng([self.seed, position, _AUGMENT]))


def augmented_process_shard(source, transform, *, seed: int, process_index: int,
                            process_count: int) -> grain.MapDataset:
    """This process's share of the endless training stream, augmented example by example.

    Same global permutation on every process, a new one each epoch (grain's
    shuffle reseeds with seed + epoch for indices beyond one epoch); process p
    takes every P-th element from p; ``transform.random_map`` runs with an rng
    seeded at the element's global position (:class:`AugmentAtGlobalPosition`).
    """
    ds = grain.MapDataset.source(source).shuffle(seed=_derive_seed(seed, _SHUFFLE)).repeat()
    ds = ds[process_index::process_count]
    return ds.map_with_index(AugmentAtGlobalPosition(transform, seed, process_index, process_count))


def eval_shard_bounds(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
    """Contiguous, near-even split: sizes differ by at most one."""
    return (
        process_index * num_examples // process_count,
        (process_index + 1) * num_examples // process_count,
    )
