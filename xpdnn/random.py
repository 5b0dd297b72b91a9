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
"""

from __future__ import annotations

import numpy as np

MASK64 = (1 << 64) - 1
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


def raw_words(seed: int, counter: int, n_blocks: int, first_block: int = 0) -> np.ndarray:
    """``4 * n_blocks`` uint64 words: blocks ``first_block ..`` of call ``counter``."""
    seed = _check_seed(seed)
    # numpy's Philox increments its 256-bit counter before each block, so start one below.
    start = (first_block + (int(counter) << 64) - 1) % (1 << 256)
    gen = np.random.Philox(counter=start, key=[seed, 0])
    return gen.random_raw(4 * int(n_blocks))


def bits32(seed: int, counter: int, n: int) -> np.ndarray:
    """The ``n`` uint32 words of call ``counter`` (element ``i`` gets word ``i``)."""
    n = int(n)
    words = raw_words(seed, counter, -(-n // 8))
    return words.view("<u4")[:n]


def threshold(rate: float) -> int:
    """Keep iff ``bits >= threshold(rate)``; ``P(keep) = 1 - threshold / 2**32``."""
    return min(max(int(round(float(rate) * 2.0**32)), 0), 1 << 32)


def keep_mask(seed: int, counter: int, shape, rate: float) -> np.ndarray:
    """Host boolean keep-mask of ``shape`` for drop probability ``rate``."""
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape)) if shape else 1
    t = threshold(rate)
    if t >= 1 << 32:
        return np.zeros(shape, dtype=bool)
    return (bits32(seed, counter, n) >= np.uint32(t)).reshape(shape)


def uniform(seed: int, counter: int, shape, dtype="float32") -> np.ndarray:
    """Host uniform ``[0, 1)`` numbers of ``shape`` (24 random bits each)."""
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape)) if shape else 1
    u = (bits32(seed, counter, n) >> np.uint32(8)).astype(dtype) * np.asarray(2.0**-24, dtype)
    return u.reshape(shape)


class Stream:
    """Hands out consecutive Philox counters under one seed.

    ``take()`` returns ``(seed, counter)`` for one random call and advances the counter, so a
    run is reproduced exactly from ``(seed, counter)``, which is what checkpoints store.
    """

    def __init__(self, seed: int = 0, counter: int = 0):
        self.seed = _check_seed(seed)
        self.counter = int(counter)

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
