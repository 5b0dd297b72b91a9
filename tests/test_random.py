"""Philox4x64-10 against the published Random123 known answers, and the (seed, counter, i)
mapping of xpdnn.random on top of it."""

from __future__ import annotations

import numpy as np
import pytest

from xpdnn import random as xr

ONES = 0xFFFFFFFFFFFFFFFF
# Random123 kat_vectors, philox4x64 with 10 rounds: counter (4 words), key (2 words), output.
KAT = [
    ((0, 0, 0, 0), (0, 0),
     (0x16554D9ECA36314C, 0xDB20FE9D672D0FDC, 0xD7E772CEE186176B, 0x7E68B68AEC7BA23B)),
    ((ONES, ONES, ONES, ONES), (ONES, ONES),
     (0x87B092C3013FE90B, 0x438C3C67BE8D0224, 0x9CC7D7C69CD777B6, 0xA09CAEBF594F0BA0)),
    ((0x243F6A8885A308D3, 0x13198A2E03707344, 0xA4093822299F31D0, 0x082EFA98EC4E6C89),
     (0x452821E638D01377, 0xBE5466CF34E90C6C),
     (0xA528F45403E61D95, 0x38C72DBD566E9788, 0xA5A1610E72FD18B5, 0x57BD43B5E52B7FE6)),
]
KAT_IDS = ["zeros", "all-ones", "pi-digits"]


def halves(words):
    """uint32 words (low, high) of each 64-bit word: the documented mapping, written out."""
    out = []
    for w in words:
        out += [w & 0xFFFFFFFF, w >> 32]
    return out


@pytest.mark.parametrize("counter, key, expected", KAT, ids=KAT_IDS)
def test_scalar_reference_matches_random123(counter, key, expected):
    assert xr.philox4x64_10(counter, key) == expected


@pytest.mark.parametrize("counter, key, expected", KAT, ids=KAT_IDS)
def test_numpy_fast_path_matches_random123(counter, key, expected):
    words = xr.philox_blocks(counter, key, 1)
    assert words.dtype == np.uint64
    assert [int(w) for w in words] == list(expected)


def test_numpy_fast_path_increments_the_256_bit_counter():
    # block 2 of counter all-ones wraps to counter zero (with carry through all four words)
    words = xr.philox_blocks((ONES,) * 4, (ONES, ONES), 2)
    assert [int(w) for w in words[4:]] == list(xr.philox4x64_10((0, 0, 0, 0), (ONES, ONES)))
    words = xr.philox_blocks((ONES, 5, 0, 0), (3, 0), 2)
    assert [int(w) for w in words[4:]] == list(xr.philox4x64_10((0, 6, 0, 0), (3, 0)))


def test_raw_words_is_the_zero_vector_for_seed_0_counter_0():
    assert [int(w) for w in xr.raw_words(0, 0, 1)] == list(KAT[0][2])


def test_bits32_known_answer():
    # (seed=0, counter=0): elements 0..7 are the halves of the all-zero Random123 vector
    expected = halves(KAT[0][2])
    assert expected[:3] == [0xCA36314C, 0x16554D9E, 0x672D0FDC]
    np.testing.assert_array_equal(xr.bits32(0, 0, 8), np.array(expected, dtype=np.uint32))
    np.testing.assert_array_equal(xr.bits32(0, 0, 5), np.array(expected[:5], dtype=np.uint32))


def test_keep_mask_and_uniform_known_answer():
    bits = np.array(halves(KAT[0][2]), dtype=np.uint64)
    t = xr.threshold(0.5)
    assert t == 2**31
    np.testing.assert_array_equal(xr.keep_mask(0, 0, (2, 4), 0.5), (bits >= t).reshape(2, 4))
    u = xr.uniform(0, 0, (8,), dtype="float64")
    np.testing.assert_array_equal(u, (bits >> 8).astype(np.float64) / 2.0**24)
    assert xr.uniform(0, 0, (8,)).dtype == np.float32
    np.testing.assert_array_equal(xr.uniform(0, 0, (8,)), u.astype(np.float32))


@pytest.mark.parametrize("seed", [0, 1, 0x452821E638D01377, 2**63 + 12345, ONES])
@pytest.mark.parametrize("counter", [0, 7, 2**40 + 3])
def test_bits32_follows_the_documented_mapping(seed, counter):
    n = 8 * 3 + 5
    expected = []
    for b in range(-(-n // 8)):
        expected += halves(xr.philox4x64_10((b, counter, 0, 0), (seed, 0)))
    np.testing.assert_array_equal(xr.bits32(seed, counter, n), np.array(expected[:n], dtype=np.uint32))


def test_raw_words_first_block_offsets_the_stream():
    full = xr.raw_words(9, 2, 10)
    np.testing.assert_array_equal(xr.raw_words(9, 2, 3, first_block=7), full[28:40])


def test_threshold_edges():
    assert xr.threshold(0.0) == 0
    assert xr.threshold(1.0) == 2**32
    assert xr.threshold(0.25) == 2**30
    assert xr.threshold(-1.0) == 0 and xr.threshold(2.0) == 2**32
    assert xr.keep_mask(3, 0, (100,), 0.0).all()
    assert not xr.keep_mask(3, 0, (100,), 1.0).any()


@pytest.mark.parametrize("n", [1, 7, 8, 9, 8 * 37 + 3, 5000])
def test_chunked_threaded_keep_mask_equals_the_plain_mapping(monkeypatch, n):
    # small chunks and many threads exercise every chunk and thread boundary
    monkeypatch.setattr(xr, "_CHUNK_BLOCKS", 5)
    monkeypatch.setattr(xr, "_PARALLEL_MIN", 16)
    monkeypatch.setattr(xr, "_threads", lambda: 3)
    expected = xr.bits32(11, 4, n) >= np.uint32(xr.threshold(0.3))
    np.testing.assert_array_equal(xr.keep_mask(11, 4, (n,), 0.3), expected)
    out = np.ones((n,), dtype=bool)
    assert xr.keep_mask(11, 4, (n,), 0.3, out=out) is out
    np.testing.assert_array_equal(out, expected)


def test_keep_mask_large_default_path():
    n = (1 << 20) + 13          # above the parallel threshold, not a multiple of 8
    expected = xr.bits32(2, 1, n) >= np.uint32(xr.threshold(0.5))
    np.testing.assert_array_equal(xr.keep_mask(2, 1, (n,), 0.5), expected)


def test_keep_mask_shape_is_c_order():
    flat = xr.keep_mask(5, 1, (35,), 0.4)
    np.testing.assert_array_equal(xr.keep_mask(5, 1, (5, 7), 0.4), flat.reshape(5, 7))
    assert xr.keep_mask(5, 1, (), 0.4).shape == ()


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="seed"):
        xr.bits32(-1, 0, 4)
    with pytest.raises(ValueError, match="seed"):
        xr.Stream(2**64)
    with pytest.raises(ValueError, match="counter"):
        xr.raw_words(0, -1, 1)
    with pytest.raises(ValueError, match="n must be"):
        xr.bits32(0, 0, -1)
    with pytest.raises(ValueError, match="out must be"):
        xr.keep_mask(0, 0, (4,), 0.5, out=np.zeros((4,), dtype=np.uint8))
    with pytest.raises(ValueError, match="out must be"):
        xr.keep_mask(0, 0, (4,), 0.5, out=np.zeros((5,), dtype=bool))


def test_stream_hands_out_consecutive_counters_and_restores():
    s = xr.Stream(42, counter=3)
    assert s.take() == (42, 3)
    assert s.take() == (42, 4)
    state = s.state_dict()
    assert state == {"seed": 42, "counter": 5}
    t = xr.Stream()
    t.load_state_dict(state)
    assert t.take() == s.take() == (42, 5)


def test_different_counters_and_seeds_give_different_bits():
    a, b, c = xr.bits32(1, 0, 64), xr.bits32(1, 1, 64), xr.bits32(2, 0, 64)
    assert (a != b).mean() > 0.9 and (a != c).mean() > 0.9


# -- shards of a batch draw the whole batch's numbers (data-parallel training) ----------------

@pytest.mark.parametrize("offset", [0, 1, 7, 8, 13, 4096 + 3])
def test_bits32_and_uniform_offset_continue_the_stream(offset):
    n = 203
    whole = xr.bits32(11, 4, offset + n)
    np.testing.assert_array_equal(xr.bits32(11, 4, n, offset=offset), whole[offset:])
    np.testing.assert_array_equal(xr.uniform(11, 4, (n,), offset=offset), xr.uniform(11, 4, (offset + n,))[offset:])
    with pytest.raises(ValueError, match="offset"):
        xr.bits32(11, 4, n, offset=-1)


@pytest.mark.parametrize("layer", ["Dropout", "RReLU", "GaussianNoise"])
def test_row_shards_draw_the_rows_of_the_whole_batch(layer):
    """Rows r0..r1 of a batch, forwarded with ``Stream.first_row = r0``, get bit for bit the
    random numbers those rows get in the whole batch (a data-parallel rank's shard)."""
    import xpdnn as xd

    make = {"Dropout": lambda: xd.Dropout(0.4, dtype="float64"), "RReLU": lambda: xd.RReLU(dtype="float64"),
            "GaussianNoise": lambda: xd.GaussianNoise(0.3, dtype="float64")}[layer]
    X = np.random.default_rng(0).standard_normal((10, 6, 3)) - 0.2
    whole = make().forward(X, train=True, rng=xr.Stream(5, 3))[0]
    for r0, r1 in ((0, 4), (4, 7), (7, 10), (3, 4)):
        rng = xr.Stream(5, 3)
        rng.first_row = r0
        part = make().forward(X[r0:r1], train=True, rng=rng)[0]
        np.testing.assert_array_equal(part, whole[r0:r1])
