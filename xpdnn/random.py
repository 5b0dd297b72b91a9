"""Counter-based randomness: Philox4x64-10 (Random123), as ``numpy.random.Philox`` implements it.

Every random number xpdnn draws during training is addressed by ``(seed, counter, i)``:

* ``seed``    -- the user's seed, the Philox key is ``(seed, 0)``;
* ``counter`` -- which call (one dropout forward, one RReLU forward, ...); a :class:`Stream`
  hands out consecutive counters;
* ``i``       -- the element's flat (C-order) index in the output.

Element ``i`` takes the 32-bit word ``(i % 8)`` of Philox block ``ctr = (i // 8, counter, 0, 0)``:
the block is four 64-bit words ``w0..w3`` and 32-bit word ``j`` is the low half (``j`` even) or
the high half (``j`` odd) of ``w[j // 2]``.  On a little-endian host this is exactly the raw
64-bit stream viewed as uint32.  The GPU kernels in :mod:`xpdnn.kernels` compute the same words,
so the same seed gives bit-identical masks on NumPy and CuPy.

* keep/drop with drop probability ``rate``: keep iff ``bits >= threshold(rate)``, with
  ``threshold(rate) = round(rate * 2**32)`` (clamped to ``[0, 2**32]``);
* uniform in ``[0, 1)``: ``(bits >> 8) * 2**-24`` (exact in float32).

Three implementations compute this mapping and are tested against each other and against the
published Random123 known-answer vectors: :func:`philox4x64_10` (scalar Python, the reference),
:func:`raw_words` / :func:`bits32` / :func:`keep_mask` (``numpy.random.Philox``, vectorized;
``keep_mask`` fills large masks in chunks on a few threads, which cannot change the result since
every block is addressed by its own counter), and ``xpdnn/kernels/philox.cuh`` (CUDA).
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

MASK64 = (1 << 64) - 1
_local = threading.local()
PHILOX_M0 = 0xD2E7470EE14C6C93
PHILOX_M1 = 0xCA5A826395121157
PHILOX_W0 = 0x9E3779B97F4A7C15
PHILOX_W1 = 0xBB67AE8584CAA73B


def philox4x64_10(counter, key) -> tuple[int, int, int, int]:
    """One Philox4x64-10 block from a 4-word counter and 2-word key (Python ints), the
    scalar reference the vectorized paths and the CUDA kernels are tested against."""
    c0, c1, c2, c3 = (int(v) & MASK64 for v in counter)
    k0, k1 = (int(v) & MASK64 for v in key)
    for _ in range(10):
        p0 = PHILOX_M0 * c0
        p1 = PHILOX_M1 * c2
        c0, c1, c2, c3 = ((p1 >> 64) ^ c1 ^ k0, p1 & MASK64, (p0 >> 64) ^ c3 ^ k1, p0 & MASK64)
        k0, k1 = (k0 + PHILOX_W0) & MASK64, (k1 + PHILOX_W1) & MASK64
    return c0, c1, c2, c3


def _check_seed(seed: int) -> int:
    seed = int(seed)
    if not 0 <= seed <= MASK64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed}")
    return seed


def _check_counter(counter: int) -> int:
    counter = int(counter)
    if not 0 <= counter <= MASK64:
        raise ValueError(f"counter must be an integer in [0, 2**64), got {counter}")
    return counter


def philox_blocks(counter, key, n_blocks: int) -> np.ndarray:
    """``4 * n_blocks`` uint64 words: Philox4x64-10 of the 256-bit counters ``counter``,
    ``counter + 1``, ... (``counter`` and ``key`` as 4 and 2 little-endian uint64 words, Python
    ints) under ``key``, computed by ``numpy.random.Philox``; the vectorized twin of
    :func:`philox4x64_10`."""
    n_blocks = int(n_blocks)
    if n_blocks < 0:
        raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
    c = (sum((int(v) & MASK64) << (64 * k) for k, v in enumerate(counter)) - 1) % (1 << 256)
    # numpy's Philox increments its 256-bit counter before each block, so start one below.
    # One generator per thread, re-pointed through its state (constructing one costs 6x more).
    gen = getattr(_local, "philox", None)
    if gen is None:
        gen = _local.philox = np.random.Philox(key=np.zeros(2, dtype=np.uint64))
    gen.state = {"bit_generator": "Philox",
                 "state": {"counter": np.array([(c >> (64 * k)) & MASK64 for k in range(4)], dtype=np.uint64),
                           "key": np.array([int(v) & MASK64 for v in key], dtype=np.uint64)},
                 "buffer": np.zeros(4, dtype=np.uint64), "buffer_pos": 4, "has_uint32": 0, "uinteger": 0}
    return gen.random_raw(4 * n_blocks)


def raw_words(seed: int, counter: int, n_blocks: int, first_block: int = 0) -> np.ndarray:
    """``4 * n_blocks`` uint64 words: Philox blocks ``first_block .. first_block + n_blocks - 1``
    of call ``counter`` under ``seed``, i.e. counters ``(b, counter, 0, 0)`` and key
    ``(seed, 0)``, each block's words ``w0, w1, w2, w3`` in order."""
    first_block = int(first_block)
    if not 0 <= first_block <= MASK64:
        raise ValueError(f"first_block must be in [0, 2**64), got {first_block}")
    return philox_blocks((first_block, _check_counter(counter), 0, 0), (_check_seed(seed), 0), n_blocks)


def _as_u32(words: np.ndarray) -> np.ndarray:
    """uint32 words (low half, high half) of each uint64 word, in order."""
    if sys.byteorder == "little":
        return words.view(np.uint32)
    halves = np.stack([words & np.uint64(0xFFFFFFFF), words >> np.uint64(32)], axis=-1)
    return halves.astype(np.uint32).reshape(-1)


def bits32(seed: int, counter: int, n: int, *, offset: int = 0) -> np.ndarray:
    """The ``n`` uint32 words of call ``counter`` from word ``offset`` on (element ``i`` gets
    word ``offset + i``), shape (n,)."""
    n, offset = int(n), int(offset)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    first, skip = divmod(offset, 8)
    return _as_u32(raw_words(seed, counter, -(-(skip + n) // 8), first_block=first))[skip:skip + n]


def threshold(rate: float) -> int:
    """Keep iff ``bits >= threshold(rate)``; ``P(keep) = 1 - threshold / 2**32``."""
    return min(max(int(round(float(rate) * 2.0**32)), 0), 1 << 32)


_CHUNK_BLOCKS = 1 << 15        # 8 * 32768 elements per chunk: the raw words (1 MiB) stay in cache
_PARALLEL_MIN = 1 << 20        # elements; smaller masks are filled on the calling thread
_pool = None                   # (pid, executor): a forked child makes its own threads


@functools.lru_cache(maxsize=None)
def _threads() -> int:
    """Threads that fill a large mask: ``XPDNN_PHILOX_THREADS`` if set (1: the calling thread
    only, e.g. in a process that forks), else up to 4 (never more than the cores)."""
    env = os.environ.get("XPDNN_PHILOX_THREADS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"XPDNN_PHILOX_THREADS must be a positive integer, got {env!r}")
        return int(env)
    return max(1, min(4, os.cpu_count() or 1))


def _fill_keep(seed, counter, t, flat, lo, hi, offset):
    """``flat[lo:hi]``: element ``i`` kept iff word ``offset + i`` of call ``counter`` >= ``t``."""
    step = 8 * _CHUNK_BLOCKS
    for a in range(lo, hi, step):
        e = min(a + step, hi)
        w0 = offset + a                              # first word of this chunk
        first, skip = divmod(w0, 8)
        words = _as_u32(raw_words(seed, counter, -(-(skip + e - a) // 8), first_block=first))
        np.greater_equal(words[skip:skip + e - a], np.uint32(t), out=flat[a:e])


def keep_mask(seed: int, counter: int, shape, rate: float, out: np.ndarray | None = None, *,
              offset: int = 0) -> np.ndarray:
    """Host boolean keep-mask of ``shape`` for drop probability ``rate``: element ``i`` (flat,
    C order) is kept iff word ``offset + i`` of call ``counter`` (``bits32(seed, counter,
    offset + n)[offset + i]``) is ``>= threshold(rate)``.  ``offset`` places the array inside a
    larger one: rows ``r0..`` of an (N, F) batch take ``offset = r0 * F``, so a shard of a batch
    draws exactly the words of those rows in the whole batch's mask.  ``out``, if given, is a
    C-contiguous bool array of ``shape`` to fill."""
    global _pool
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape)) if shape else 1
    offset = int(offset)
    if not 0 <= offset < 1 << 67:       # 2**64 blocks of 8 words
        raise ValueError(f"offset must be in [0, 2**67), got {offset}")
    if out is None:
        out = np.empty(shape, dtype=bool)
    elif out.dtype != np.bool_ or tuple(out.shape) != shape or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous bool array of shape {shape}")
    t = threshold(rate)
    if t >= 1 << 32:
        out[...] = False
        return out
    flat = out.reshape(-1)
    workers = _threads()
    if n < _PARALLEL_MIN or workers == 1:
        _fill_keep(seed, counter, t, flat, 0, n, offset)
        return out
    if _pool is None or _pool[0] != os.getpid():
        _pool = (os.getpid(), ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xpdnn-philox"))
    step = 8 * -(-n // (8 * workers))             # whole blocks per worker (when offset % 8 == 0)
    jobs = [_pool[1].submit(_fill_keep, seed, counter, t, flat, a, min(a + step, n), offset)
            for a in range(0, n, step)]
    for job in jobs:
        job.result()
    return out


def uniform(seed: int, counter: int, shape, dtype="float32", *, offset: int = 0) -> np.ndarray:
    """Host uniform ``[0, 1)`` numbers of ``shape`` (24 random bits each), element ``i`` from
    word ``offset + i``."""
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape)) if shape else 1
    u = (bits32(seed, counter, n, offset=offset) >> np.uint32(8)).astype(dtype) * np.asarray(2.0**-24, dtype)
    return u.reshape(shape)


class Stream:
    """Hands out consecutive Philox counters under one seed.

    ``take()`` returns ``(seed, counter)`` for one random call and advances the counter, so a
    run is reproduced exactly from ``(seed, counter)``, which is what checkpoints store.

    ``first_row`` is the index, in the whole mini-batch, of the first row this process holds
    (0 in one process; a data-parallel rank's shard starts further in).  Layers draw their
    numbers at ``offset(shape)``, so the rows of a shard get exactly the numbers those rows get
    when one process trains on the whole batch.
    """

    def __init__(self, seed: int = 0, counter: int = 0):
        self.seed = _check_seed(seed)
        self.counter = int(counter)
        self.first_row = 0

    def offset(self, shape, per_element: int = 1) -> int:
        """The first word of a batch of ``shape`` (rows first) in the whole batch's numbers,
        with ``per_element`` words per element."""
        shape = tuple(int(s) for s in shape)
        return self.first_row * per_element * (int(np.prod(shape[1:])) if shape else 1)

    def take(self) -> tuple[int, int]:
        c = self.counter
        self.counter += 1
        return self.seed, c

    def state_dict(self) -> dict:
        return {"seed": self.seed, "counter": self.counter}

    def load_state_dict(self, state: dict) -> None:
        self.seed = _check_seed(state["seed"])
        self.counter = int(state["counter"])

    def __repr__(self):
        return f"Stream(seed={self.seed}, counter={self.counter})"
