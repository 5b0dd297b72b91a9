"""Properties that edits of single operators, constants or defaults break (issue 16).

Each test states one documented property and checks it exactly, against a reference written
from the definition (``numpy.random.Philox`` for the random mapping, PyTorch autograd for the
layers, scikit-learn for PCA), so that an off-by-one comparison, a changed rounding, a flipped
sign convention, a changed default or a statistic fitted on the wrong data fails here:

* the random mapping's boundaries: ``keep`` exactly at ``bits == threshold`` and the rounding of
  ``threshold(rate) = round(rate * 2**32)`` (half to even, Python's ``round``), on NumPy, on every
  backend through ``Dropout``, and in the dropout kernel's host (C++) build;
* conventions: PCA's component signs (scikit-learn's ``svd_flip(u_based_decision=False)``: each
  component's largest-magnitude entry is positive), documented defaults against PyTorch's,
  PReLU's per-channel slopes on axis 1 of N-D input, every activation's gradient at exactly 0;
* the fused softmax cross-entropy's label check at ``C``, ``C + 1``, ``-1`` and ``ignore_index``
  (the kernel source run on the CPU, see ``tests/test_kernel_softmax_xent.py``);
* preprocessing fitted on the training split only (``Trainer.fit`` and ``xpdnn train``);
* ``EarlyStopping`` at its edges: the stopping epoch, ties, ``min_delta``, ``restore_best``.
"""

from __future__ import annotations

import inspect
import math
from fractions import Fraction

import numpy as np
import pytest

import xpdnn as xd
from xpdnn import _backend as B
from xpdnn import random as xr
from xpdnn.layers.dropout import Dropout
from xpdnn.random import Stream

torch = pytest.importorskip("torch")

# the kernels' host builds, module-scoped fixtures shared with their own test files (the tests
# directory is on sys.path under pytest's default import mode)
from test_dropout import host_kernel  # noqa: E402,F401  (a fixture)
from test_kernel_softmax_xent import emu, run_emulated  # noqa: E402,F401  (emu is a fixture)

MASK64 = (1 << 64) - 1


# -- the random mapping at its exact boundaries ---------------------------------------------

def philox_bits_reference(seed, counter, n):
    """``bits(i)`` from the definition in ``xpdnn/random.py``: word ``i % 8`` of the Philox4x64-10
    block with counter ``(i // 8, counter, 0, 0)`` and key ``(seed, 0)``, word ``j`` being the low
    (even ``j``) or high (odd ``j``) 32 bits of 64-bit output ``j // 2``.  Each block is drawn by
    its own ``numpy.random.Philox``, whose counter is incremented before a block is produced, so
    it starts one below the block's counter."""
    out = np.empty(8 * (-(-n // 8)), dtype=np.uint64)
    for b in range(len(out) // 8):
        c = (b | (counter << 64)) - 1
        if c < 0:
            c += 1 << 256
        ctr = np.array([(c >> (64 * k)) & MASK64 for k in range(4)], dtype=np.uint64)
        g = np.random.Philox(counter=ctr, key=np.array([seed, 0], dtype=np.uint64))
        for k, w in enumerate(int(v) for v in g.random_raw(4)):
            out[8 * b + 2 * k] = w & 0xFFFFFFFF
            out[8 * b + 2 * k + 1] = w >> 32
    return out[:n]


def threshold_reference(rate):
    """``round(rate * 2**32)`` in exact rational arithmetic, ties to even, clamped to [0, 2**32]."""
    return min(max(round(Fraction(float(rate)) * 2**32), 0), 1 << 32)


# rates whose threshold is not exact, ties (rate * 2**32 = k + 1/2) and the edges
TIE_RATES = [2.0**-33, 3 * 2.0**-33, 5 * 2.0**-33, 0.5 + 2.0**-33, 0.5 + 3 * 2.0**-33, 1 - 2.0**-33,
             1 - 3 * 2.0**-33]
ROUNDED_RATES = [0.1, 0.2, 0.3, 1 / 3, 0.7, 0.9, 0.95, 1e-10, 0.123456789, 2.0**-34, 3 * 2.0**-34,
                 1 - 2.0**-34, 0.5 + 2.0**-34, 0.5 + 3 * 2.0**-34, 0.5 - 2.0**-34]


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.5, 1.0] + TIE_RATES + ROUNDED_RATES)
def test_threshold_is_rate_times_2_32_rounded_half_to_even(rate):
    t = xr.threshold(rate)
    assert type(t) is int
    assert t == threshold_reference(rate), (rate, t)


def test_threshold_ties_go_to_even_and_the_clamp_is_2_32():
    assert xr.threshold(2.0**-33) == 0                   # 0.5 -> 0
    assert xr.threshold(3 * 2.0**-33) == 2               # 1.5 -> 2
    assert xr.threshold(5 * 2.0**-33) == 2               # 2.5 -> 2
    assert xr.threshold(2.0**-34) == 0 and xr.threshold(3 * 2.0**-34) == 1
    assert xr.threshold(1 - 2.0**-33) == 2**32           # 2**32 - 0.5 -> 2**32 (even)
    assert xr.threshold(1 - 3 * 2.0**-33) == 2**32 - 2   # 2**32 - 1.5 -> 2**32 - 2
    assert xr.threshold(1 - 2.0**-34) == 2**32           # rounds up to 2**32: nothing is kept
    assert not xr.keep_mask(1, 0, (64,), 1 - 2.0**-34).any()
    assert xr.threshold(1.5) == 2**32 and xr.threshold(-0.5) == 0


@pytest.mark.parametrize("seed, counter", [(0, 0), (7, 3), (2**64 - 1, 2**40 + 1)])
def test_bits32_equals_the_numpy_philox_definition(seed, counter):
    n = 8 * 5 + 3
    np.testing.assert_array_equal(xr.bits32(seed, counter, n).astype(np.uint64),
                                  philox_bits_reference(seed, counter, n))


@pytest.mark.parametrize("seed, counter", [(3, 0), (2**63 + 11, 9)])
def test_keep_is_bits_at_or_above_threshold_exactly(seed, counter):
    n = 40
    bits = philox_bits_reference(seed, counter, n)
    for i in (0, 5, 17, 39):
        at = float(bits[i]) / 2**32                        # exact: threshold(at) == bits[i]
        above = float(bits[i] + 1) / 2**32                 # threshold one above bits[i]
        assert xr.threshold(at) == int(bits[i]) and xr.threshold(above) == int(bits[i]) + 1
        assert xr.keep_mask(seed, counter, (n,), at)[i]
        assert not xr.keep_mask(seed, counter, (n,), above)[i]
        for rate in (at, above):
            np.testing.assert_array_equal(xr.keep_mask(seed, counter, (n,), rate),
                                          bits >= threshold_reference(rate))


@pytest.mark.parametrize("rate", TIE_RATES + ROUNDED_RATES)
def test_keep_mask_equals_the_reference_for_rounded_rates(rate):
    n = 4096
    bits = philox_bits_reference(5, 2, n)
    np.testing.assert_array_equal(xr.keep_mask(5, 2, (n,), rate), bits >= threshold_reference(rate))


def test_dropout_layer_keeps_exactly_at_the_threshold(backend):
    seed, counter, n = 4, 6, 48
    bits = philox_bits_reference(seed, counter, n)
    i = int(np.argsort(bits)[n // 2])                 # a middling value: rate near 0.5
    X = backend.asarray(np.ones((6, 8)))
    for rate, kept in ((float(bits[i]) / 2**32, True), (float(bits[i] + 1) / 2**32, False)):
        layer = Dropout(rate, dtype="float64")
        Y = backend.numpy(layer.forward(X, train=True, rng=Stream(seed, counter))[0]).reshape(-1)
        assert (Y[i] != 0) == kept
        np.testing.assert_array_equal(Y != 0, bits >= threshold_reference(rate))


def _run_dropout_kernel(so, x, seed, counter, threshold, scale=1.0):
    from xpdnn.kernels import dropout as kernel

    y = np.full_like(x, 7.0)
    getattr(so, kernel.KERNELS["float32"])(x.ctypes.data, y.ctypes.data, x.size, seed, counter, threshold,
                                           float(scale), 0)
    return y


@pytest.mark.parametrize("offset", [0, 1])          # 16-byte vector path and element path
def test_dropout_kernel_host_build_keeps_exactly_at_the_threshold(host_kernel, offset):
    seed, counter, n = 9, 1, 203
    bits = philox_bits_reference(seed, counter, n)
    base = np.ones(n + 4, dtype=np.float32)
    x = base[offset:offset + n]
    for i in (0, 3, 8, 100, 200):
        t = int(bits[i])
        y_at = _run_dropout_kernel(host_kernel, x, seed, counter, t)
        y_above = _run_dropout_kernel(host_kernel, x, seed, counter, t + 1)
        assert y_at[i] == 1.0 and y_above[i] == 0.0
        np.testing.assert_array_equal(y_at != 0, bits >= t)
    assert (_run_dropout_kernel(host_kernel, x, seed, counter, 0) == 1).all()
    assert (_run_dropout_kernel(host_kernel, x, seed, counter, 2**32) == 0).all()


@pytest.mark.parametrize("rate", [0.1, 0.3, 1 / 3, 0.5 + 2.0**-33, 3 * 2.0**-33, 1 - 3 * 2.0**-33])
def test_dropout_kernel_host_build_equals_the_reference_for_rounded_rates(host_kernel, rate):
    seed, counter, n = 12, 4, 1001
    x = np.ones(n, dtype=np.float32)
    y = _run_dropout_kernel(host_kernel, x, seed, counter, xr.threshold(rate))
    np.testing.assert_array_equal(y != 0, philox_bits_reference(seed, counter, n) >= threshold_reference(rate))


# -- PCA's sign convention --------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_pca_components_follow_svd_flip_exactly(backend, seed):
    """scikit-learn's PCA (``svd_flip(u_based_decision=False)``) and xpdnn's docstring: each
    component's largest-magnitude entry is positive; so the components equal scikit-learn's
    with their signs, not up to sign."""
    from sklearn.decomposition import PCA as SkPCA

    rng = np.random.default_rng(seed)
    Xh = rng.standard_normal((120, 6)) @ rng.standard_normal((6, 6)) + rng.standard_normal(6) * 3
    pca = xd.preprocessing.PCA(4).fit(backend.asarray(Xh))
    comps = B.to_numpy(pca.components_)
    rows = np.arange(comps.shape[0])
    assert (comps[rows, np.argmax(np.abs(comps), axis=1)] > 0).all()
    sk = SkPCA(4, svd_solver="full").fit(Xh)
    np.testing.assert_allclose(comps, sk.components_, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(backend.numpy(pca.transform(backend.asarray(Xh))), sk.transform(Xh),
                               rtol=1e-9, atol=1e-9)


def test_pca_whiten_signs_match_scikit_learn():
    from sklearn.decomposition import PCA as SkPCA

    rng = np.random.default_rng(7)
    Xh = rng.standard_normal((200, 5)) @ rng.standard_normal((5, 5))
    ours = xd.preprocessing.PCA(3, whiten=True, eps=0.0).fit_transform(Xh)
    sk = SkPCA(3, whiten=True, svd_solver="full").fit_transform(Xh)
    # scikit-learn divides by the unbiased variance, xpdnn by the biased one (C = Xc^T Xc / N)
    np.testing.assert_allclose(ours, sk * np.sqrt(len(Xh) / (len(Xh) - 1)), rtol=1e-9, atol=1e-9)


# -- documented defaults against PyTorch's ----------------------------------------------------

def _default(fn, name):
    return inspect.signature(fn).parameters[name].default


def test_batchnorm1d_defaults_behave_as_torch(backend):
    """Default momentum (0.1) and eps (1e-5): running statistics after several training batches
    and the evaluation output equal ``torch.nn.BatchNorm1d``'s with its defaults.  The batches
    have a variance near eps, so eps changes the output."""
    rng = np.random.default_rng(0)
    bn = xd.BatchNorm1d(3, dtype="float64")
    ref = torch.nn.BatchNorm1d(3).double()
    assert bn.momentum == ref.momentum and bn.eps == ref.eps
    for k in range(4):
        Xh = rng.standard_normal((8, 3)) * 3e-3 + k
        X = backend.asarray(Xh)
        bn.ensure_like(X)
        Y = backend.numpy(bn.forward(X, train=True)[0])
        Yr = ref.train()(torch.from_numpy(Xh)).detach().numpy()
        np.testing.assert_allclose(Y, Yr, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(backend.numpy(bn.buffers["running_mean"]), ref.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(backend.numpy(bn.buffers["running_var"]), ref.running_var.numpy(), rtol=1e-12)
    Xh = rng.standard_normal((5, 3)) * 3e-3 + 1
    Ye = backend.numpy(bn.forward(backend.asarray(Xh), train=False)[0])
    np.testing.assert_allclose(Ye, ref.eval()(torch.from_numpy(Xh)).detach().numpy(), rtol=1e-10, atol=1e-10)


def test_layernorm_default_eps_behaves_as_torch(backend):
    Xh = np.random.default_rng(1).standard_normal((4, 5)) * 3e-3
    ln = xd.LayerNorm(5, dtype="float64")
    ln.ensure_like(backend.asarray(Xh))
    Y = backend.numpy(ln.forward(backend.asarray(Xh))[0])
    np.testing.assert_allclose(Y, torch.nn.LayerNorm(5).double()(torch.from_numpy(Xh)).detach().numpy(),
                               rtol=1e-10, atol=1e-10)


DEFAULT_ACTIVATIONS = [
    (lambda: xd.LeakyReLU(dtype="float64"), lambda: torch.nn.LeakyReLU()),
    (lambda: xd.ELU(dtype="float64"), lambda: torch.nn.ELU()),
    (lambda: xd.Softplus(dtype="float64"), lambda: torch.nn.Softplus()),
    (lambda: xd.GELU(dtype="float64"), lambda: torch.nn.GELU()),
    (lambda: xd.PReLU(dtype="float64"), lambda: torch.nn.PReLU().double()),
    (lambda: xd.RReLU(dtype="float64"), lambda: torch.nn.RReLU().eval()),
]


@pytest.mark.parametrize("make, make_ref", DEFAULT_ACTIVATIONS,
                         ids=["LeakyReLU", "ELU", "Softplus", "GELU", "PReLU", "RReLU-eval"])
def test_activation_defaults_behave_as_torch(make, make_ref):
    Xh = np.linspace(-6, 6, 97)
    layer = make()
    Y = layer.forward(Xh, train=False)[0]
    np.testing.assert_allclose(Y, make_ref()(torch.from_numpy(Xh)).detach().numpy(), rtol=1e-12, atol=1e-12)


def test_dropout_default_rate_is_torch_p():
    assert Dropout().rate == torch.nn.Dropout().p
    assert xd.DropConnect(2, 2).rate == torch.nn.Dropout().p


# (xpdnn object with defaults, torch callable, {xpdnn name: torch name}); SGD's lr is left out:
# xpdnn documents lr=0.01, PyTorch's SGD has 1e-3 (reported, not a property tested here)
OPTIMIZER_DEFAULTS = [
    (xd.SGD, torch.optim.SGD, {"momentum": "momentum", "weight_decay": "weight_decay", "nesterov": "nesterov",
                               "dampening": "dampening"}),
    (xd.Adagrad, torch.optim.Adagrad, {"lr": "lr", "lr_decay": "lr_decay", "weight_decay": "weight_decay",
                                       "initial_accumulator_value": "initial_accumulator_value", "eps": "eps"}),
    (xd.RMSProp, torch.optim.RMSprop, {"lr": "lr", "alpha": "alpha", "eps": "eps", "weight_decay": "weight_decay",
                                       "momentum": "momentum", "centered": "centered"}),
    (xd.Adam, torch.optim.Adam, {"lr": "lr", "betas": "betas", "eps": "eps", "weight_decay": "weight_decay",
                                 "amsgrad": "amsgrad"}),
    (xd.AdamW, torch.optim.AdamW, {"lr": "lr", "betas": "betas", "eps": "eps", "weight_decay": "weight_decay",
                                   "amsgrad": "amsgrad"}),
]


@pytest.mark.parametrize("ours, theirs, names", OPTIMIZER_DEFAULTS, ids=lambda v: getattr(v, "__name__", ""))
def test_optimizer_defaults_are_torch_defaults(ours, theirs, names):
    opt = ours()
    ref = theirs([torch.zeros(1, requires_grad=True)]).defaults
    for mine, their in names.items():
        value = getattr(opt, mine)
        expected = ref[their]
        if isinstance(expected, tuple):
            assert tuple(value) == expected, mine
        else:
            assert value == expected, mine


def test_schedule_loss_and_regularizer_defaults_are_torch_defaults():
    plateau = xd.ReduceLROnPlateau()
    for name in ("factor", "patience", "threshold", "threshold_mode", "cooldown", "mode", "min_lr"):
        assert getattr(plateau, name) == _default(torch.optim.lr_scheduler.ReduceLROnPlateau, name), name
    assert xd.StepDecay(3).gamma == _default(torch.optim.lr_scheduler.StepLR, "gamma")
    assert xd.ClipGradNorm(1.0).norm_type == _default(torch.nn.utils.clip_grad_norm_, "norm_type")
    assert xd.Huber().delta == _default(torch.nn.HuberLoss, "delta")
    assert xd.MulticlassHinge().margin == _default(torch.nn.MultiMarginLoss, "margin")
    assert xd.MultilabelHinge().margin == 1.0          # torch.nn.MultiLabelMarginLoss's fixed margin
    ce = xd.SoftmaxCrossEntropy()
    assert ce.label_smoothing == _default(torch.nn.CrossEntropyLoss, "label_smoothing")
    for loss in (ce, xd.BinaryCrossEntropy(), xd.MSE(), xd.MAE(), xd.Huber(), xd.MulticlassHinge()):
        assert loss.reduction == _default(torch.nn.MSELoss, "reduction")
    assert xd.CosineLinear(2, 2).eps == _default(torch.nn.CosineSimilarity, "eps")


def test_preprocessing_defaults_are_scikit_learn_defaults():
    from sklearn.decomposition import PCA as SkPCA

    pca = xd.preprocessing.PCA()
    assert pca.n_components == _default(SkPCA, "n_components")
    assert pca.whiten == _default(SkPCA, "whiten")


# -- PReLU on N-D input, gradients at 0 ----------------------------------------------------------

@pytest.mark.parametrize("shape", [(4, 3, 5), (2, 3, 4, 5), (4, 3, 3), (2, 3, 2, 3)])
@pytest.mark.parametrize("per_channel", [True, False])
def test_prelu_nd_matches_torch(backend, shape, per_channel):
    rng = np.random.default_rng(len(shape))
    Xh = rng.standard_normal(shape)
    Xh.reshape(-1)[::7] = 0.0                        # some exact zeros (the kink)
    G = rng.standard_normal(shape)
    C = shape[1] if per_channel else 1
    alpha = np.array([0.1, -0.3, 0.7])[:C] if per_channel else np.array([0.4])
    layer = xd.PReLU(C if per_channel else None, dtype="float64")
    layer.set_parameters(alpha=alpha)
    X = backend.asarray(Xh)
    layer.ensure_like(X)
    Y, backprop = layer.forward(X, train=True)
    dX = backend.numpy(backprop(backend.asarray(G)))
    ref = torch.nn.PReLU(num_parameters=C).double()
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(alpha))
    x = torch.from_numpy(Xh).requires_grad_(True)
    y = ref(x)
    y.backward(torch.from_numpy(G))
    np.testing.assert_allclose(backend.numpy(Y), y.detach().numpy(), rtol=1e-14, atol=0)
    np.testing.assert_allclose(dX, x.grad.numpy(), rtol=1e-14, atol=0)
    np.testing.assert_allclose(backend.numpy(layer.grads["alpha"]), ref.weight.grad.numpy(), rtol=1e-12, atol=1e-14)


# every activation with its PyTorch twin; at X = +0.0 and -0.0 the gradient must be PyTorch's
ZERO_GRAD_CASES = [
    ("ReLU", lambda: xd.ReLU(dtype="float64"), torch.relu),
    ("Identity", lambda: xd.Identity(dtype="float64"), lambda x: x * 1.0),
    ("Sigmoid", lambda: xd.Sigmoid(dtype="float64"), torch.sigmoid),
    ("Tanh", lambda: xd.Tanh(dtype="float64"), torch.tanh),
    ("LeakyReLU", lambda: xd.LeakyReLU(0.2, dtype="float64"), lambda x: torch.nn.functional.leaky_relu(x, 0.2)),
    ("PReLU", lambda: xd.PReLU(dtype="float64", init=0.3), lambda x: torch.nn.functional.prelu(
        x, torch.tensor([0.3], dtype=torch.float64))),
    ("RReLU-eval", lambda: xd.RReLU(0.1, 0.3, dtype="float64"), lambda x: torch.nn.functional.rrelu(
        x, 0.1, 0.3, training=False)),
    ("ELU", lambda: xd.ELU(0.7, dtype="float64"), lambda x: torch.nn.functional.elu(x, 0.7)),
    ("Softplus", lambda: xd.Softplus(dtype="float64"), torch.nn.functional.softplus),
    ("Softplus-beta2", lambda: xd.Softplus(2.0, dtype="float64"), lambda x: torch.nn.functional.softplus(x, 2.0)),
    ("GELU", lambda: xd.GELU(dtype="float64"), torch.nn.functional.gelu),
    ("GELU-tanh", lambda: xd.GELU("tanh", dtype="float64"),
     lambda x: torch.nn.functional.gelu(x, approximate="tanh")),
    ("SiLU", lambda: xd.SiLU(dtype="float64"), torch.nn.functional.silu),
    ("Softmax", lambda: xd.Softmax(dtype="float64"), lambda x: torch.softmax(x, dim=-1)),
]


@pytest.mark.parametrize("name, make, ref", ZERO_GRAD_CASES, ids=[c[0] for c in ZERO_GRAD_CASES])
def test_activation_gradient_at_exactly_zero_is_torch_autograd(backend, name, make, ref):
    Xh = np.array([[0.0, -0.0, 1e-300, -1e-300, 0.5], [-0.0, 0.0, -2.0, 0.0, 0.0]])
    G = np.array([[1.0, 2.0, -3.0, 0.5, 1.5], [-1.0, 0.25, 2.0, 3.0, -2.0]])
    layer = make()
    X = backend.asarray(Xh)
    layer.ensure_like(X)
    Y, backprop = layer.forward(X, train=False)
    dX = backend.numpy(backprop(backend.asarray(G)))
    x = torch.from_numpy(Xh.copy()).requires_grad_(True)
    y = ref(x)
    y.backward(torch.from_numpy(G))
    np.testing.assert_allclose(backend.numpy(Y), y.detach().numpy(), rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(dX, x.grad.numpy(), rtol=1e-14, atol=1e-300)


def test_prelu_slope_gradient_at_zero_is_zero_and_rrelu_train_uses_its_slope_at_zero():
    layer = xd.PReLU(2, dtype="float64")
    Xh = np.array([[0.0, -0.0], [-0.0, 0.0]])
    _, backprop = layer.forward(Xh, train=True)
    dX = backprop(np.array([[1.0, 2.0], [3.0, 4.0]]))
    np.testing.assert_array_equal(layer.grads["alpha"], [0.0, 0.0])
    np.testing.assert_array_equal(dX, 0.25 * np.array([[1.0, 2.0], [3.0, 4.0]]))
    rr = xd.RReLU(0.1, 0.3, dtype="float64")
    Xh = np.zeros((3, 4))
    _, backprop = rr.forward(Xh, train=True, rng=Stream(5, 2))
    np.testing.assert_array_equal(backprop(np.ones((3, 4))), rr.slopes(5, 2, (3, 4), Xh))


# -- the fused softmax cross-entropy's label check, on the CPU --------------------------------------

NO_BAD = (1 << 64) - 1


@pytest.mark.slow
@pytest.mark.parametrize("C", [6, 1100])              # the warp kernel and the block kernel
def test_kernel_label_check_at_c_and_beyond(emu, C):
    Z = np.random.default_rng(C).standard_normal((5, C)).astype(np.float32)
    for y, first_bad in (([0, C - 1, 1, 2, 3], NO_BAD), ([0, C, 1, 2, 3], 1), ([0, 1, C + 1, C, 2], 2),
                         ([0, 1, 2, -1, 3], 3), ([0, 1, 2, 3, C], 4)):
        rl, G, den, bad, *_ = run_emulated(emu, Z, np.array(y), "float32")
        y = np.array(y)
        live = (y >= 0) & (y < C)
        assert bad == first_bad, (y, bad)
        assert den == live.sum()
        assert np.all(rl[~live] == 0) and np.all(G[~live] == 0) and np.all(rl[live] > 0)


@pytest.mark.slow
@pytest.mark.parametrize("C", [6, 1100])
def test_kernel_ignore_index_handling(emu, C):
    from xpdnn.losses.cross_entropy import SoftmaxCrossEntropy

    Z = np.random.default_rng(1).standard_normal((6, C)).astype(np.float32)
    cases = [
        (C, [0, C, 1, C, 2, 3], NO_BAD),               # ignore_index == C: those rows are ignored
        (C, [0, C, C + 1, 2, 3, 4], 2),                # ... but C + 1 is still not a class
        (-1, [0, -1, 2, -1, 3, 1], NO_BAD),            # ignore_index == -1
        (-1, [0, -1, -2, 1, 1, 1], 2),
        (2, [0, 2, 1, 2, 3, 2], NO_BAD),               # an in-range ignore_index drops that class
        (-100, [0, C, 1, -100, 2, 3], 1),              # a label C is bad whatever ignore_index is
    ]
    for ign, y, first_bad in cases:
        y = np.array(y)
        rl, G, den, bad, *_ = run_emulated(emu, Z, y, "float32", ignore_index=ign)
        live = (y != ign) & (y >= 0) & (y < C)
        assert bad == first_bad, (ign, y, bad)
        assert den == live.sum()
        assert np.all(rl[~live] == 0) and np.all(G[~live] == 0)
        if first_bad == NO_BAD:
            ref_rows, ref_G = SoftmaxCrossEntropy(ignore_index=ign, reduction="mean")(Z.astype(np.float64), y)
            np.testing.assert_allclose(rl.sum(), ref_rows, rtol=1e-5)
            np.testing.assert_allclose(G, ref_G, rtol=1e-4, atol=1e-7)


def test_portable_loss_refuses_label_c_and_accepts_c_as_ignore_index():
    from xpdnn.losses.cross_entropy import SoftmaxCrossEntropy

    Z = np.zeros((3, 4))
    with pytest.raises(ValueError):
        SoftmaxCrossEntropy()(Z, np.array([0, 4, 1]))
    with pytest.raises(ValueError):
        SoftmaxCrossEntropy()(Z, np.array([0, -1, 1]))
    loss, dZ = SoftmaxCrossEntropy(ignore_index=4)(Z, np.array([0, 4, 1]))
    assert loss == pytest.approx(math.log(4)) and np.all(dZ[1] == 0)


# -- preprocessing is fitted on the training split only ------------------------------------------

def _stats(t):
    return {k: v.copy() for k, v in t.get_state()[1].items()}


@pytest.mark.parametrize("make", [xd.preprocessing.Standardizer, xd.preprocessing.MinMaxScaler,
                                  lambda: xd.preprocessing.PCA(3), xd.preprocessing.ZCA],
                         ids=["Standardizer", "MinMaxScaler", "PCA", "ZCA"])
def test_trainer_fit_leaves_the_preprocessing_statistics_alone(backend, make):
    rng = np.random.default_rng(0)
    X_tr, X_val = rng.standard_normal((40, 5)), rng.standard_normal((20, 5)) * 5 + 3
    y_tr, y_val = rng.integers(0, 3, 40), rng.integers(0, 3, 20)
    pre = make().fit(backend.asarray(X_tr))
    before = _stats(pre)
    net = xd.Sequential(xd.Linear(pre.output_size(), 3, dtype="float64"))
    net.preprocessing = pre
    xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.1), epochs=2, batch_size=16,
               progress=False).fit(backend.asarray(X_tr), backend.asarray(y_tr),
                                   validation=(backend.asarray(X_val), backend.asarray(y_val)))
    after = _stats(net.preprocessing)
    assert net.preprocessing is pre and after.keys() == before.keys()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)


@pytest.mark.parametrize("name, make", [("standardize", xd.preprocessing.Standardizer),
                                        ("pca:5", lambda: xd.preprocessing.PCA(5))])
def test_cli_fits_its_preprocessing_on_the_training_split(tmp_path, capsys, name, make):
    from xpdnn import cli

    path = tmp_path / "m.xpd"
    rc = cli.main(["train", "--backend", "numpy", "--epochs", "1", "--hidden", "8", "--quiet", "--seed", "3",
                   "--test-size", "0.4", "--preprocess", name, "--save", str(path)])
    assert rc == 0, capsys.readouterr().err
    got = _stats(xd.load(str(path)).preprocessing)
    X, y = xd.datasets.load_digits()
    X_tr, X_te, _, _ = xd.datasets.train_test_split(X, y, test_size=0.4, seed=3)
    expected = _stats(make().fit(X_tr))
    everything = _stats(make().fit(np.concatenate([X_tr, X_te])))
    assert got.keys() == expected.keys()
    for k in expected:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-12, atol=1e-12, err_msg=k)
    assert any(not np.allclose(expected[k], everything[k]) for k in expected)   # the test can tell


# -- EarlyStopping at its edges ---------------------------------------------------------------------

class _FakeNet:
    def __init__(self):
        self.W = np.zeros(2)

    def state_arrays(self):
        return {"W": self.W}

    def load_state_arrays(self, arrays):
        self.W = np.asarray(arrays["W"]).copy()


class _FakeTrainer:
    def __init__(self):
        self.net, self.epoch, self.stop_training = _FakeNet(), 0, False


def drive(es, values):
    """Run ``es`` over scripted monitored values as the trainer's loop does; the net's weights at
    epoch e are ``[e, -e]``.  Returns (epoch at which it stopped or None, restored weights)."""
    t = _FakeTrainer()
    es.on_train_begin(t)
    stopped = None
    for epoch, v in enumerate(values):
        t.net.W = np.array([epoch, -epoch], dtype=float)
        t.epoch = epoch + 1
        es.on_epoch_end(t, epoch, {"val_loss": v})
        if t.stop_training:
            stopped = epoch
            break
    es.on_train_end(t)
    return stopped, t.net.W


@pytest.mark.parametrize("patience", [1, 2, 3, 5])
def test_early_stopping_stops_exactly_patience_epochs_after_the_best(patience):
    values = [5.0, 3.0, 4.0, 2.0] + [2.5] * 10
    stopped, W = drive(xd.EarlyStopping(patience=patience), values)
    if patience == 1:
        assert stopped == 2 and list(W) == [1.0, -1.0]           # epoch 2 did not improve on epoch 1
    else:
        assert stopped == 3 + patience and list(W) == [3.0, -3.0]


def test_early_stopping_a_tie_is_not_an_improvement():
    stopped, W = drive(xd.EarlyStopping(patience=3), [1.0, 0.5, 0.5, 0.5, 0.5, 0.5])
    assert stopped == 4 and list(W) == [1.0, -1.0]             # best epoch 1, not a later tie
    stopped, _ = drive(xd.EarlyStopping(patience=3), [1.0, 0.5, 0.5, 0.5 - 2**-40, 0.5, 0.5, 0.5, 0.5])
    assert stopped == 6


def test_early_stopping_min_delta_boundary():
    # improvement means value < best - min_delta: exactly min_delta better is not enough
    stopped, W = drive(xd.EarlyStopping(patience=2, min_delta=0.25), [1.0, 0.75, 0.75, 0.5])
    assert stopped == 2 and list(W) == [0.0, -0.0]
    stopped, W = drive(xd.EarlyStopping(patience=2, min_delta=0.25), [1.0, 0.75 - 2**-40, 0.75, 0.5, 0.5])
    assert stopped == 3 and list(W) == [1.0, -1.0]


def test_early_stopping_without_restore_keeps_the_last_weights():
    stopped, W = drive(xd.EarlyStopping(patience=2, restore_best=False), [1.0, 0.5, 0.9, 0.9, 0.9])
    assert stopped == 3 and list(W) == [3.0, -3.0]


class _Inject(xd.Callback):
    """Puts a scripted ``val_loss`` into the logs (before EarlyStopping reads them) and records
    the weights at the end of each epoch."""

    reads_gradients = False

    def __init__(self, values):
        self.values, self.weights = values, []

    def on_epoch_end(self, trainer, epoch, logs):
        logs["val_loss"] = self.values[epoch]
        self.weights.append({k: B.to_numpy(v).copy() for k, v in trainer.net.state_arrays().items()})


def test_early_stopping_in_a_real_fit_restores_that_epochs_weights(backend):
    rng = np.random.default_rng(3)
    X, y = backend.asarray(rng.standard_normal((32, 4))), backend.asarray(rng.integers(0, 2, 32))
    inject = _Inject([3.0, 1.0, 2.0, 0.9, 1.5, 0.5, 0.7, 0.5, 0.7, 0.1, 0.1, 0.1])
    net = xd.Sequential(xd.Linear(4, 2, dtype="float64"))
    es = xd.EarlyStopping(patience=3)
    history = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.5), epochs=12, batch_size=8,
                         progress=False, callbacks=[inject, es]).fit(X, y)
    assert len(history["loss"]) == 9                       # best at 5 (a tie at 7): stops after epoch 8
    assert es.best_epoch == 5
    for k, v in net.state_arrays().items():
        np.testing.assert_array_equal(B.to_numpy(v), inject.weights[5][k])
    inject = _Inject([3.0, 1.0, 2.0, 1.0, 1.5, 1.0, 0.7, 0.7, 0.7])
    net = xd.Sequential(xd.Linear(4, 2, dtype="float64"))
    history = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.5), epochs=9, batch_size=8,
                         progress=False, callbacks=[inject, xd.EarlyStopping(patience=3)]).fit(X, y)
    assert len(history["loss"]) == 5                       # best at 1 (a tie at 3): stops after epoch 4
    for k, v in net.state_arrays().items():
        np.testing.assert_array_equal(B.to_numpy(v), inject.weights[1][k])
        assert not np.array_equal(inject.weights[1][k], inject.weights[4][k])
