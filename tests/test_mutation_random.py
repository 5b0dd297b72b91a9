"""Properties of xpdnn.random that its mutation run (tests/MUTATION.md) found unasserted: the
exact ranges of seed, counter and block index, empty requests, and the byte-order-independent
split of a 64-bit word into its two 32-bit halves."""

import sys

import numpy as np
import pytest

import xpdnn.random as xr

TOP = 2**64 - 1


def test_seed_counter_and_first_block_accept_exactly_0_to_2_64_minus_1():
    # both ends of [0, 2**64) are valid and address the Philox key/counter words as given
    for seed, counter, first in ((0, 0, 0), (TOP, TOP, TOP)):
        words = xr.raw_words(seed, counter, 1, first_block=first)
        ref = xr.philox4x64_10((first, counter, 0, 0), (seed, 0))
        assert [int(w) for w in words] == list(ref)
    assert xr.Stream(TOP, counter=7).take() == (TOP, 7)
    # one past either end is refused, never wrapped around
    for bad in (-1, 2**64):
        with pytest.raises(ValueError, match="seed"):
            xr.raw_words(bad, 0, 1)
        with pytest.raises(ValueError, match="counter"):
            xr.raw_words(0, bad, 1)
        with pytest.raises(ValueError, match="first_block"):
            xr.raw_words(0, 0, 1, first_block=bad)
        with pytest.raises(ValueError, match="seed"):
            xr.Stream().load_state_dict({"seed": bad, "counter": 0})


def test_zero_blocks_and_zero_elements_are_empty_and_negative_counts_refused():
    assert xr.philox_blocks((0, 0, 0, 0), (0, 0), 0).shape == (0,)
    assert xr.raw_words(3, 1, 0).shape == (0,)
    assert xr.bits32(3, 1, 0).shape == (0,)
    with pytest.raises(ValueError, match="n_blocks"):
        xr.philox_blocks((0, 0, 0, 0), (0, 0), -1)
    with pytest.raises(ValueError, match="n_blocks"):
        xr.raw_words(0, 0, -1)


def test_the_portable_split_into_32_bit_halves_equals_the_little_endian_view(monkeypatch):
    words = xr.raw_words(5, 2, 3)
    little = xr._as_u32(words).copy()
    np.testing.assert_array_equal(little[0::2], (words & np.uint64(0xFFFFFFFF)).astype(np.uint32))
    np.testing.assert_array_equal(little[1::2], (words >> np.uint64(32)).astype(np.uint32))
    monkeypatch.setattr(sys, "byteorder", "big")      # the path a big-endian host takes
    np.testing.assert_array_equal(xr._as_u32(words), little)


def test_stream_state_round_trips_and_repr_names_seed_and_counter():
    s = xr.Stream(11, counter=40)
    assert s.state_dict() == {"seed": 11, "counter": 40}
    assert repr(s) == "Stream(seed=11, counter=40)"
    t = xr.Stream()
    t.load_state_dict({"seed": 11, "counter": 40})
    assert (t.seed, t.counter) == (11, 40)
    assert xr.Stream().state_dict() == {"seed": 0, "counter": 0}


def test_keep_mask_reuses_its_own_pool_and_replaces_one_inherited_from_another_process(monkeypatch):
    """The filling threads belong to one process: a pool recorded under another pid (what a
    forked child inherits, whose threads do not exist there) is replaced, never used, and the
    process's own pool is reused by the next call rather than a new one made per mask."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(xr, "_PARALLEL_MIN", 16)
    monkeypatch.setattr(xr, "_threads", lambda: 3)
    inherited = ThreadPoolExecutor(max_workers=1)
    inherited.shutdown()                      # unusable: submit() raises
    monkeypatch.setattr(xr, "_pool", (-1, inherited))
    expected = xr.bits32(4, 9, 4000) >= np.uint32(xr.threshold(0.3))
    np.testing.assert_array_equal(xr.keep_mask(4, 9, (4000,), 0.3), expected)
    import os
    pid, pool = xr._pool
    assert pid == os.getpid() and pool is not inherited
    np.testing.assert_array_equal(xr.keep_mask(4, 9, (4000,), 0.3), expected)
    assert xr._pool[1] is pool


def test_scalar_shapes_take_element_0_of_the_call():
    u = xr.uniform(6, 2, ())
    assert u.shape == () and u == xr.uniform(6, 2, (1,))[0]
    m = xr.keep_mask(6, 2, (), 0.5)
    assert m.shape == () and m == (xr.bits32(6, 2, 1)[0] >= np.uint32(xr.threshold(0.5)))
