"""The fused kernels' first-use check (xpdnn/kernels/check.py), on the CPU: the dispatch in
xpdnn/kernels/__init__.py is pointed at fake kernels (one correct, one off by a little, one that
raises) by monkeypatching its "can the fused kernel take this array" predicates, so the CUDA
branch runs on NumPy, PyTorch and array-api-strict arrays without a GPU."""

import warnings

import numpy as np
import pytest

from xpdnn import _backend as B
from xpdnn import kernels
from xpdnn.kernels import check
from xpdnn.kernels import softmax_xent as real_xent
from xpdnn.layers.dropout import Dropout, dropout_mask
from xpdnn.losses.cross_entropy import SoftmaxCrossEntropy


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.delenv(check.ENV, raising=False)
    check.reset()
    yield
    check.reset()


class FakeXent:
    """The fused softmax cross-entropy's interface; ``mode``: ok | loss (loss 3e-5 too large) |
    lastcol (gradient off in the last column) | raise."""
    SUFFIX, WARP_VPT, MAX_WARP_C = real_xent.SUFFIX, real_xent.WARP_VPT, real_xent.MAX_WARP_C
    launch_config = staticmethod(real_xent.launch_config)

    def __init__(self, mode):
        self.mode, self.calls = mode, 0

    def softmax_xent(self, Z, y, *, weight=None, weight_sum=None, ignore_index=None, label_smoothing=0.0,
                     reduction="mean", inplace=False, check=True):
        self.calls += 1
        if self.mode == "raise":
            raise RuntimeError("cudaErrorLaunchFailure: unspecified launch failure (fake)")
        w = None if weight is None else B.to_numpy(weight)
        loss, G = SoftmaxCrossEntropy(weight=w, ignore_index=ignore_index, label_smoothing=label_smoothing,
                                      reduction=reduction, fused=False)(Z, y)
        xp = B.namespace(Z)
        if self.mode == "loss":
            loss = loss * (1 + 3e-5)
        if self.mode == "lastcol":
            C = Z.shape[1]
            last = xp.astype(xp.arange(C, device=B.device(Z)) == C - 1, G.dtype)
            G = G + last[None, :] * 1e-3
        return loss, G


class FakeDropout:
    """The fused dropout's interface; ``mode``: ok | ftz (flushes subnormal results to zero, as
    a kernel compiled with -ftz would) | flip (one mask bit wrong) | raise."""

    def __init__(self, mode):
        self.mode, self.calls = mode, 0

    def dropout(self, X, rate, seed, counter, offset=0):
        self.calls += 1
        if self.mode == "raise":
            raise RuntimeError("CUDA_ERROR_ILLEGAL_ADDRESS (fake)")
        xp = B.namespace(X)
        M = dropout_mask(X, rate, seed, counter, offset)
        if self.mode == "flip":                          # element 100 (flat) kept <-> dropped
            n = 1
            for d in X.shape:
                n *= d
            at = xp.reshape(xp.arange(n, device=B.device(X)) == min(100, n - 1), X.shape)
            M = xp.where(at, (1.0 / (1.0 - rate)) - M, M)
        Y = X * M
        if self.mode == "ftz":
            tiny = float(np.finfo(B.dtype_name(X.dtype)).tiny)
            Y = xp.where(xp.abs(Y) < tiny, xp.zeros_like(Y), Y)
        return Y


def _put(name, a):
    if name == "numpy":
        return a
    if name == "torch":
        torch = pytest.importorskip("torch")
        return torch.from_numpy(a.copy())
    strict = pytest.importorskip("array_api_strict")
    return strict.asarray(a)


LIBS = ["numpy", "torch", "array_api_strict"]


def _xent_case(lib, fake, monkeypatch, **kw):
    monkeypatch.setattr(kernels, "_xent_kernel", lambda Z: fake)
    rng = np.random.default_rng(0)
    Z = _put(lib, (rng.standard_normal((6, 10)) * 2).astype(np.float32))
    y = _put(lib, rng.integers(0, 10, 6))
    loss_fn = SoftmaxCrossEntropy(weight=np.linspace(0.5, 2, 10), ignore_index=-100, **kw)
    ref_loss, ref_G = SoftmaxCrossEntropy(weight=np.linspace(0.5, 2, 10), ignore_index=-100, fused=False, **kw)(Z, y)
    return loss_fn, Z, y, B.to_numpy(ref_loss), B.to_numpy(ref_G)


@pytest.mark.parametrize("lib", LIBS)
def test_a_correct_kernel_passes_once_and_is_used(lib, monkeypatch):
    fake = FakeXent("ok")
    loss_fn, Z, y, ref_loss, ref_G = _xent_case(lib, fake, monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error", check.KernelCheckWarning)
        loss, G = loss_fn(Z, y)
    probes = fake.calls - 1
    assert probes >= 4                                # the probe ran the kernel (every configuration)
    [r] = check.results()
    assert r.ok and r.kernel == "softmax_xent" and r.dtype == "float32" and r.variant.startswith("xent_warp1_f32/")
    assert r.seconds > 0
    np.testing.assert_allclose(B.to_numpy(loss), ref_loss, rtol=1e-6)
    for _ in range(3):                                # afterwards: no probe, only the kernel
        loss_fn(Z, y)
    assert fake.calls == probes + 4
    assert len(check.results()) == 1


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("mode", ["loss", "lastcol", "raise"])
def test_a_wrong_or_failing_kernel_warns_and_falls_back(lib, mode, monkeypatch):
    fake = FakeXent(mode)
    loss_fn, Z, y, ref_loss, ref_G = _xent_case(lib, fake, monkeypatch, label_smoothing=0.1)
    with pytest.warns(check.KernelCheckWarning) as caught:
        loss, G = loss_fn(Z, y)
    [w] = caught
    text = str(w.message)
    assert "softmax_xent" in text and "xent_warp1_f32" in text and "float32" in text
    assert check.device_label(Z) in text and "portable path is used" in text
    assert {"loss": "loss (", "lastcol": "gradient (", "raise": "raised RuntimeError"}[mode] in text
    if mode != "raise":
        assert "times the tolerance" in text
    # the result is the portable path's, not the fake's
    np.testing.assert_array_equal(B.to_numpy(loss), ref_loss)
    np.testing.assert_array_equal(B.to_numpy(G), ref_G)
    calls = fake.calls
    with warnings.catch_warnings():
        warnings.simplefilter("error", check.KernelCheckWarning)    # warned once, not per call
        loss2, _ = loss_fn(Z, y)
    assert fake.calls == calls                       # the kernel is never called again
    np.testing.assert_array_equal(B.to_numpy(loss2), ref_loss)
    assert not check.results()[0].ok


@pytest.mark.parametrize("mode", ["loss", "raise"])
def test_strict_raises_on_every_call(mode, monkeypatch):
    monkeypatch.setenv(check.ENV, "strict")
    fake = FakeXent(mode)
    loss_fn, Z, y, *_ = _xent_case("numpy", fake, monkeypatch)
    for _ in range(2):
        with pytest.raises(check.KernelCheckError, match="softmax_xent.*numpy:cpu"):
            loss_fn(Z, y)


def test_check_off_uses_the_kernel_unchecked(monkeypatch):
    monkeypatch.setenv(check.ENV, "0")
    fake = FakeXent("loss")
    loss_fn, Z, y, ref_loss, _ = _xent_case("numpy", fake, monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error", check.KernelCheckWarning)
        loss, _ = loss_fn(Z, y)
    assert fake.calls == 1 and not check.results()
    np.testing.assert_allclose(float(loss), float(ref_loss) * (1 + 3e-5), rtol=1e-7)


def test_each_dtype_and_variant_is_checked_once(monkeypatch):
    fake = FakeXent("ok")
    monkeypatch.setattr(kernels, "_xent_kernel", lambda Z: fake)
    rng = np.random.default_rng(1)
    loss_fn = SoftmaxCrossEntropy()
    for dtype in ("float32", "float64", "float32"):
        for C in (10, 12, 2001, 10):                 # rows of 40 / 48 bytes (f32), 80 / 96 (f64), odd
            Z = rng.standard_normal((5, C)).astype(dtype)
            if Z.ctypes.data % 16:
                pytest.skip("NumPy allocation not 16-byte aligned")
            loss_fn(Z, rng.integers(0, C, 5))
    seen = {(r.dtype, r.variant) for r in check.results()}
    assert seen == {("float32", "xent_warp1_f32/scalar"), ("float32", "xent_warp1_f32/vec16"),
                    ("float32", "xent_block_f32/scalar"), ("float64", "xent_warp1_f64/vec16"),
                    ("float64", "xent_block_f64/scalar")}
    assert len(check.results()) == len(seen)


@pytest.mark.parametrize("kernel,tname,variant", check.all_variants(real_xent, dtypes=("float32", "float64",
                                                                                         "float16")))
def test_every_probe_hits_its_variant(kernel, tname, variant):
    """The probe built for a variant launches that variant (the check raises otherwise)."""
    if kernel == "dropout":
        x = np.zeros(check.DROPOUT_N + 1, dtype=tname)
        X = x[1:] if variant == "element" and x.ctypes.data % 16 == 0 else x[:-1]
        if x.ctypes.data % 16:
            pytest.skip("NumPy allocation not 16-byte aligned")
        assert check.dropout_variant(X) == variant
        assert np.count_nonzero((np.abs(check.dropout_probe_host(np.dtype(tname))) < np.finfo(tname).tiny)
                                & (check.dropout_probe_host(np.dtype(tname)) != 0)) >= 16
        return
    N, C = check.xent_probe_shape(real_xent, tname, variant)
    name, _ = variant.split("/")
    assert N % 2 == 1 and N > real_xent.WARP_ROWS
    Z = np.zeros((N, C), dtype=tname)
    if Z.ctypes.data % 16:
        pytest.skip("NumPy allocation not 16-byte aligned")
    assert check.xent_variant(real_xent, Z, inplace=False) == variant
    if variant.endswith("scalar"):
        assert C % 2 == 1                             # rows start misaligned


def test_the_probe_catches_a_tail_bug_that_small_inputs_miss(monkeypatch):
    """A kernel wrong only past column 1024 (the block kernel's loop) fails its own variant's check."""
    class Tail(FakeXent):
        def softmax_xent(self, Z, y, **kw):
            loss, G = super().softmax_xent(Z, y, **kw)
            if Z.shape[1] > 1024:
                G = G * 1.001
            return loss, G

    fake = Tail("ok")
    monkeypatch.setattr(kernels, "_xent_kernel", lambda Z: fake)
    rng = np.random.default_rng(2)
    loss_fn = SoftmaxCrossEntropy()
    loss_fn(rng.standard_normal((4, 10)).astype(np.float32), rng.integers(0, 10, 4))
    with pytest.warns(check.KernelCheckWarning, match="xent_block_f32"):
        loss_fn(rng.standard_normal((4, 3001)).astype(np.float32), rng.integers(0, 3001, 4))
    assert [r.ok for r in check.results()] == [True, False]


# -- dropout ----------------------------------------------------------------------------------------

def _dropout_case(lib, fake, monkeypatch, dtype="float32"):
    monkeypatch.setattr(kernels, "_dropout_kernel", lambda X: fake)
    X = _put(lib, np.random.default_rng(3).standard_normal((6, 9)).astype(dtype))
    layer = Dropout(0.25, seed=4)
    ref_layer = Dropout(0.25, seed=4, fused=False)
    ref, _ = ref_layer.forward(X, train=True)
    return layer, X, B.to_numpy(ref)


@pytest.mark.parametrize("lib", LIBS)
def test_dropout_correct_kernel_is_used_after_one_check(lib, monkeypatch):
    fake = FakeDropout("ok")
    layer, X, ref = _dropout_case(lib, fake, monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error", check.KernelCheckWarning)
        Y, backprop = layer.forward(X, train=True)
        dX = backprop(X)
    assert fake.calls == 3                           # probe, forward, backward
    np.testing.assert_array_equal(B.to_numpy(Y), ref)
    np.testing.assert_array_equal(B.to_numpy(dX), ref)
    [r] = check.results()
    assert r.ok and r.kernel == "dropout" and r.variant == "vec16"


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("mode,expect", [("ftz", "differ bitwise"), ("flip", "1 mask bits differ"),
                                         ("raise", "raised RuntimeError")])
def test_dropout_wrong_kernel_warns_and_falls_back(lib, mode, expect, monkeypatch):
    fake = FakeDropout(mode)
    layer, X, ref = _dropout_case(lib, fake, monkeypatch)
    with pytest.warns(check.KernelCheckWarning, match=expect) as caught:
        Y, backprop = layer.forward(X, train=True)
    assert "dropout [vec16, float32]" in str(caught[0].message)
    calls = fake.calls
    np.testing.assert_array_equal(B.to_numpy(Y), ref)
    np.testing.assert_array_equal(B.to_numpy(backprop(X)), ref)
    layer.forward(X, train=True)
    assert fake.calls == calls


def test_ftz_is_caught_in_float64_and_float16_too(monkeypatch):
    for dtype in ("float64", "float16"):
        check.reset()
        fake = FakeDropout("ftz")
        layer, X, ref = _dropout_case("numpy", fake, monkeypatch, dtype=dtype)
        with pytest.warns(check.KernelCheckWarning, match=f"dropout \\[vec16, {dtype}\\]"):
            Y, _ = layer.forward(X, train=True)
        np.testing.assert_array_equal(Y, ref)


def test_dropout_misaligned_start_is_its_own_variant(monkeypatch):
    """A start off 16-byte alignment takes the element-by-element path: checked separately, so a
    kernel wrong only there falls back only there."""
    class Misaligned(FakeDropout):
        def dropout(self, X, rate, seed, counter, offset=0):
            Y = super().dropout(X, rate, seed, counter, offset)
            return Y * 0 if check.dropout_variant(X) == "element" else Y

    fake = Misaligned("ok")
    monkeypatch.setattr(kernels, "_dropout_kernel", lambda X: fake)
    buf = np.random.default_rng(5).standard_normal(65).astype(np.float32)
    if buf.ctypes.data % 16:
        pytest.skip("NumPy allocation not 16-byte aligned")
    layer = Dropout(0.5, seed=1)
    layer.forward(buf[:64], train=True)
    with pytest.warns(check.KernelCheckWarning, match="dropout \\[element, float32\\]"):
        Y, _ = layer.forward(buf[1:], train=True)
    assert np.count_nonzero(Y) > 10                  # the portable result, not the fake's zeros
    assert [(r.variant, r.ok) for r in check.results()] == [("vec16", True), ("element", False)]
    calls = fake.calls
    layer.forward(buf[:64], train=True)              # the aligned variant still runs the kernel
    assert fake.calls == calls + 1


def test_dropout_strict_and_off(monkeypatch):
    monkeypatch.setenv(check.ENV, "strict")
    layer, X, _ = _dropout_case("numpy", FakeDropout("flip"), monkeypatch)
    with pytest.raises(check.KernelCheckError, match="dropout"):
        layer.forward(X, train=True)
    check.reset()
    monkeypatch.setenv(check.ENV, "off")
    fake = FakeDropout("flip")
    layer, X, ref = _dropout_case("numpy", fake, monkeypatch)
    Y, _ = layer.forward(X, train=True)
    assert fake.calls == 1 and not np.array_equal(Y, ref)


def test_mode_parsing(monkeypatch):
    for value, expected in [("0", "off"), ("off", "off"), ("strict", "strict"), ("STRICT", "strict"),
                            ("1", "warn"), ("", "warn")]:
        monkeypatch.setenv(check.ENV, value)
        assert check.mode() == expected


def test_real_kernels_are_not_picked_without_cupy_arrays():
    """The predicates the tests replace say no for host arrays: the everyday CPU paths never
    reach the check."""
    x = np.zeros((3, 4), dtype=np.float32)
    assert kernels._xent_kernel(x) is None and kernels._dropout_kernel(x) is None
    SoftmaxCrossEntropy()(x, np.array([0, 1, 2]))
    Dropout(0.5).forward(x, train=True)
    assert not check.results()


def test_a_training_run_with_wrong_kernels_warns_once_each_and_matches_the_plain_run(monkeypatch):
    """Integration: the trainer's loss and dropout go through the dispatch; wrong fused kernels are
    caught on the first step and the history equals a run that never saw them."""
    import xpdnn as xd

    rng = np.random.default_rng(7)
    X = rng.standard_normal((96, 12)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0)

    def fit():
        net = xd.Sequential(xd.Linear(12, 16, seed=1), xd.ReLU(), xd.Dropout(0.25, seed=2), xd.Linear(16, 3, seed=3))
        tr = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.1, momentum=0.9), batch_size=16,
                        epochs=2, seed=0, progress=False)
        return tr.fit(X, y)

    plain = fit()
    xent, drop = FakeXent("lastcol"), FakeDropout("ftz")
    monkeypatch.setattr(kernels, "_xent_kernel", lambda Z: xent)
    monkeypatch.setattr(kernels, "_dropout_kernel", lambda X: drop)
    with pytest.warns(check.KernelCheckWarning) as caught:
        checked = fit()
    assert sorted(str(w.message).split(" [")[0] for w in caught) == ["fused CUDA kernel dropout",
                                                                      "fused CUDA kernel softmax_xent"]
    assert checked["loss"] == plain["loss"]
    assert xent.calls == 4 and drop.calls == 1       # the probes only
