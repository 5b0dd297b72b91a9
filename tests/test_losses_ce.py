"""Softmax cross-entropy, binary cross-entropy and the multi-label logistic loss on every
backend: PyTorch parity (float64), central-difference gradients, edge cases, target checks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from xpdnn import _backend as B
from xpdnn.losses.binary import BinaryCrossEntropy, MultiLabelLogistic
from xpdnn.losses.cross_entropy import SoftmaxCrossEntropy, log_softmax
from xpdnn.testing import check_loss_gradient

N, C = 6, 5
IGNORE = -100


def _labels(rng, n=N, c=C, ignore=True):
    y = rng.integers(0, c, n)
    if ignore:
        y[1] = IGNORE
        y[4] = IGNORE
    return y


def _summed(loss_fn):
    """reduction='none' returns per-row losses; its dZ is the gradient of their sum."""
    def f(Z, t):
        L, dZ = loss_fn(Z, t)
        return B.namespace(L).sum(L), dZ
    return f


def _torch_ce(Z, t, **kw):
    torch = pytest.importorskip("torch")
    Zt = torch.tensor(Z, dtype=torch.float64, requires_grad=True)
    w = kw.pop("weight", None)
    tt = torch.tensor(t)
    out = torch.nn.functional.cross_entropy(Zt, tt, weight=None if w is None else torch.tensor(w), **kw)
    out.sum().backward()
    return out.detach().numpy(), Zt.grad.numpy()


def test_known_softmax(backend):
    Z = backend.asarray(np.array([[3.0, 1.0, -3.0]]))
    P = backend.numpy(backend.xp.exp(log_softmax(Z)))
    np.testing.assert_allclose(P, [[0.8789, 0.1189, 0.0022]], atol=5e-4)
    # dZ of the mean loss for one row is softmax - onehot
    _, dZ = SoftmaxCrossEntropy()(Z, backend.asarray(np.array([0])))
    np.testing.assert_allclose(backend.numpy(dZ), [[0.8789 - 1, 0.1189, 0.0022]], atol=5e-4)


CE_OPTIONS = list(itertools.product([False, True], [None, IGNORE], [0.0, 0.25], ["mean", "sum", "none"]))


@pytest.mark.parametrize("weighted,ignore_index,smoothing,reduction", CE_OPTIONS)
def test_ce_labels_match_torch(backend, rng, weighted, ignore_index, smoothing, reduction):
    Z = rng.standard_normal((N, C)) * 2
    y = _labels(rng, ignore=ignore_index is not None)
    w = rng.uniform(0.2, 3.0, C) if weighted else None
    loss_fn = SoftmaxCrossEntropy(weight=w, ignore_index=ignore_index, label_smoothing=smoothing, reduction=reduction)
    loss, dZ = loss_fn(backend.asarray(Z), backend.asarray(y))
    kw = dict(weight=w, label_smoothing=smoothing, reduction=reduction)
    if ignore_index is not None:
        kw["ignore_index"] = ignore_index
    ref_loss, ref_dZ = _torch_ce(Z, y, **kw)
    assert tuple(loss.shape) == (() if reduction != "none" else (N,))
    np.testing.assert_allclose(backend.numpy(loss), ref_loss, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(backend.numpy(dZ), ref_dZ, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("weighted,smoothing,reduction",
                         list(itertools.product([False, True], [0.0, 0.3], ["mean", "sum", "none"])))
def test_ce_probability_targets_match_torch(backend, rng, weighted, smoothing, reduction):
    Z = rng.standard_normal((N, C)) * 2
    Q = rng.dirichlet(np.ones(C), N)
    w = rng.uniform(0.2, 3.0, C) if weighted else None
    loss_fn = SoftmaxCrossEntropy(weight=w, label_smoothing=smoothing, reduction=reduction)
    loss, dZ = loss_fn(backend.asarray(Z), backend.asarray(Q))
    ref_loss, ref_dZ = _torch_ce(Z, Q, weight=w, label_smoothing=smoothing, reduction=reduction)
    np.testing.assert_allclose(backend.numpy(loss), ref_loss, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(backend.numpy(dZ), ref_dZ, rtol=1e-12, atol=1e-14)


GRAD_CASES = [
    dict(),
    dict(weight=True),
    dict(ignore_index=IGNORE),
    dict(label_smoothing=0.2),
    dict(weight=True, ignore_index=IGNORE, label_smoothing=0.1),
    dict(weight=True, ignore_index=IGNORE, label_smoothing=0.1, reduction="sum"),
    dict(weight=True, ignore_index=IGNORE, label_smoothing=0.1, reduction="none"),
    dict(soft=True),
    dict(soft=True, weight=True, label_smoothing=0.2),
]


@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "plain")
def test_ce_gradient(backend, rng, case):
    case = dict(case)
    soft = case.pop("soft", False)
    if case.pop("weight", False):
        case["weight"] = rng.uniform(0.2, 3.0, C)
    loss_fn = SoftmaxCrossEntropy(**case)
    Z = backend.asarray(rng.standard_normal((N, C)))
    t = rng.dirichlet(np.ones(C), N) if soft else _labels(rng, ignore="ignore_index" in case)
    f = _summed(loss_fn) if case.get("reduction") == "none" else loss_fn
    check_loss_gradient(f, Z, backend.asarray(t), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("weighted", [False, True])
def test_ce_all_ignored_is_zero(backend, rng, weighted):
    w = rng.uniform(0.2, 3.0, C) if weighted else None
    loss_fn = SoftmaxCrossEntropy(weight=w, ignore_index=IGNORE, label_smoothing=0.1)
    loss, dZ = loss_fn(backend.asarray(rng.standard_normal((N, C))), backend.asarray(np.full(N, IGNORE)))
    assert B.to_float(loss) == 0.0
    assert np.all(backend.numpy(dZ) == 0.0)


def test_ce_ignore_index_drops_rows(backend, rng):
    """An ignored row changes neither the loss nor the other rows' gradients."""
    Z = rng.standard_normal((N, C))
    y = _labels(rng, ignore=False)
    y_ign = y.copy()
    y_ign[2] = IGNORE
    keep = np.arange(N) != 2
    full, dfull = SoftmaxCrossEntropy(ignore_index=IGNORE)(backend.asarray(Z), backend.asarray(y_ign))
    sub, dsub = SoftmaxCrossEntropy()(backend.asarray(Z[keep]), backend.asarray(y[keep]))
    np.testing.assert_allclose(B.to_float(full), B.to_float(sub), rtol=1e-12)
    np.testing.assert_allclose(backend.numpy(dfull)[keep], backend.numpy(dsub), rtol=1e-12)
    assert np.all(backend.numpy(dfull)[2] == 0)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_ce_extreme_logits_are_finite(backend, smoothing):
    Z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [1e4, 1e4, 1e4]])
    y = np.array([1, 0, 2])
    loss, dZ = SoftmaxCrossEntropy(label_smoothing=smoothing)(backend.asarray(Z), backend.asarray(y))
    loss, dZ = B.to_float(loss), backend.numpy(dZ)
    assert np.isfinite(loss) and np.all(np.isfinite(dZ))
    # -log p per class, exactly: row 0 [0, 2e4, 1e4], row 1 [2e4 + log 2, log 2, log 2], row 2 log 3
    nlp = np.array([[0.0, 2e4, 1e4], [2e4 + np.log(2), np.log(2), np.log(2)], [np.log(3)] * 3])
    rows = (1 - smoothing) * nlp[np.arange(3), y] + smoothing * nlp.mean(axis=1)
    np.testing.assert_allclose(loss, rows.mean(), rtol=1e-12)
    P = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [1 / 3] * 3])
    T = (1 - smoothing) * np.eye(3)[y] + smoothing / 3
    np.testing.assert_allclose(dZ, (P - T) / 3, atol=1e-15)


def test_ce_float32(backend, rng):
    Z = rng.standard_normal((N, C)).astype(np.float32)
    y = _labels(rng, ignore=False)
    loss, dZ = SoftmaxCrossEntropy()(backend.asarray(Z), backend.asarray(y))
    assert B.dtype_name(dZ.dtype) == "float32" and B.dtype_name(loss.dtype) == "float32"
    ref, ref_dZ = SoftmaxCrossEntropy()(Z.astype(np.float64), y)
    np.testing.assert_allclose(B.to_float(loss), float(ref), rtol=1e-6)
    np.testing.assert_allclose(backend.numpy(dZ), ref_dZ, atol=1e-7)


def test_ce_check_targets(backend):
    loss_fn = SoftmaxCrossEntropy(ignore_index=IGNORE)
    ok = loss_fn.check_targets(backend.asarray(np.array([0, 2, IGNORE, 1])), 3)
    assert B.dtype_name(ok.dtype) == "int64"
    with pytest.raises(ValueError, match="class label 3"):
        loss_fn.check_targets(backend.asarray(np.array([0, 3])), 3)
    with pytest.raises(ValueError, match="negative"):
        loss_fn.check_targets(backend.asarray(np.array([0, -1])), 3)
    with pytest.raises(ValueError, match="negative"):
        SoftmaxCrossEntropy().check_targets(backend.asarray(np.array([0, IGNORE])), 3)
    with pytest.raises(ValueError, match="non-integer"):
        loss_fn.check_targets(backend.asarray(np.array([0.0, 1.5])), 3)
    # probability targets
    good = np.array([[0.2, 0.8, 0.0], [1.0, 0.0, 0.0]])
    loss_fn.check_targets(backend.asarray(good), 3)
    with pytest.raises(ValueError, match="shape"):
        loss_fn.check_targets(backend.asarray(good), 4)
    with pytest.raises(ValueError, match="negative"):
        loss_fn.check_targets(backend.asarray(np.array([[1.2, -0.2, 0.0]])), 3)
    with pytest.raises(ValueError, match="sum to 1"):
        loss_fn.check_targets(backend.asarray(np.array([[0.5, 0.4, 0.0]])), 3)
    with pytest.raises(ValueError, match="weight has 2 entries"):
        SoftmaxCrossEntropy(weight=[1.0, 2.0]).check_targets(backend.asarray(np.array([0, 1])), 3)


def test_ce_bad_options():
    with pytest.raises(ValueError, match="reduction"):
        SoftmaxCrossEntropy(reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        SoftmaxCrossEntropy(label_smoothing=1.5)
    with pytest.raises(ValueError, match="negative"):
        SoftmaxCrossEntropy(weight=[1.0, -1.0])
    with pytest.raises(ValueError, match="1-D"):
        SoftmaxCrossEntropy(weight=[[1.0]])
    with pytest.raises(ValueError, match="do not match"):
        SoftmaxCrossEntropy()(np.zeros((2, 3)), np.full((2, 4), 0.25))


@pytest.mark.parametrize("loss_fn", [
    SoftmaxCrossEntropy(weight=[1.0, 2.0, 0.5, 1.0, 1.0], ignore_index=IGNORE, label_smoothing=0.1, reduction="sum"),
    BinaryCrossEntropy(pos_weight=[2.0], reduction="sum"),
    MultiLabelLogistic(weight=[1.0, 2.0, 0.5, 1.0, 1.0], reduction="none"),
], ids=lambda f: type(f).__name__)
def test_get_config_rebuilds(rng, loss_fn):
    import json
    config = json.loads(json.dumps(loss_fn.get_config()))
    twin = type(loss_fn)(**config)
    Z = rng.standard_normal((N, C))
    t = _labels(rng) if isinstance(loss_fn, SoftmaxCrossEntropy) else (rng.random((N, C)) > 0.5).astype(float)
    a, da = loss_fn(Z, t)
    b, db = twin(Z, t)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(da, db)


def test_classification_flags():
    assert SoftmaxCrossEntropy.classification is True
    assert BinaryCrossEntropy.classification is False
    assert MultiLabelLogistic.classification is False


def _torch_bce(Z, T, pos_weight=None, reduction="mean"):
    torch = pytest.importorskip("torch")
    Zt = torch.tensor(Z, requires_grad=True)
    pw = None if pos_weight is None else torch.tensor(pos_weight)
    out = torch.nn.functional.binary_cross_entropy_with_logits(Zt, torch.tensor(T), pos_weight=pw, reduction=reduction)
    out.sum().backward()
    return out.detach().numpy(), Zt.grad.numpy()


@pytest.mark.parametrize("pos_weight,reduction", list(itertools.product([False, True], ["mean", "sum", "none"])))
def test_bce_matches_torch(backend, rng, pos_weight, reduction):
    Z = rng.standard_normal((N, C)) * 3
    T = rng.random((N, C))
    T[:2] = np.round(T[:2])
    pw = rng.uniform(0.3, 4.0, C) if pos_weight else None
    loss, dZ = BinaryCrossEntropy(pos_weight=pw, reduction=reduction)(backend.asarray(Z), backend.asarray(T))
    ref, ref_dZ = _torch_bce(Z, T, pw, reduction)
    np.testing.assert_allclose(backend.numpy(loss), ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(backend.numpy(dZ), ref_dZ, rtol=1e-12, atol=1e-14)


def test_bce_single_output_column(backend, rng):
    Z = rng.standard_normal((N, 1))
    t = (rng.random(N) > 0.5).astype(np.float64)
    loss_fn = BinaryCrossEntropy(pos_weight=2.5)
    y = loss_fn.check_targets(backend.asarray(t), 1)
    assert tuple(y.shape) == (N, 1)
    loss, dZ = loss_fn(backend.asarray(Z), backend.asarray(t))
    ref, ref_dZ = _torch_bce(Z, t[:, None], np.array([2.5]))
    np.testing.assert_allclose(B.to_float(loss), ref, rtol=1e-12)
    np.testing.assert_allclose(backend.numpy(dZ), ref_dZ, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("weighted,reduction", list(itertools.product([False, True], ["mean", "sum", "none"])))
def test_multilabel_matches_torch(backend, rng, weighted, reduction):
    torch = pytest.importorskip("torch")
    Z = rng.standard_normal((N, C)) * 3
    T = (rng.random((N, C)) > 0.5).astype(np.float64)
    w = rng.uniform(0.3, 2.0, C) if weighted else None
    loss, dZ = MultiLabelLogistic(weight=w, reduction=reduction)(backend.asarray(Z), backend.asarray(T))
    Zt = torch.tensor(Z, requires_grad=True)
    out = torch.nn.functional.multilabel_soft_margin_loss(
        Zt, torch.tensor(T), weight=None if w is None else torch.tensor(w), reduction=reduction)
    out.sum().backward()
    assert tuple(loss.shape) == (() if reduction != "none" else (N,))
    np.testing.assert_allclose(backend.numpy(loss), out.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(backend.numpy(dZ), Zt.grad.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("make", [
    lambda rng: BinaryCrossEntropy(),
    lambda rng: BinaryCrossEntropy(pos_weight=rng.uniform(0.3, 4.0, C)),
    lambda rng: BinaryCrossEntropy(pos_weight=rng.uniform(0.3, 4.0, C), reduction="sum"),
    lambda rng: BinaryCrossEntropy(reduction="none"),
    lambda rng: MultiLabelLogistic(),
    lambda rng: MultiLabelLogistic(weight=rng.uniform(0.3, 2.0, C)),
    lambda rng: MultiLabelLogistic(reduction="none"),
], ids=["bce", "bce-pw", "bce-pw-sum", "bce-none", "ml", "ml-w", "ml-none"])
def test_logistic_gradients(backend, rng, make):
    loss_fn = make(rng)
    f = _summed(loss_fn) if loss_fn.reduction == "none" else loss_fn
    Z = backend.asarray(rng.standard_normal((N, C)) * 2)
    T = (rng.random((N, C)) > 0.5).astype(np.float64)
    if isinstance(loss_fn, BinaryCrossEntropy):
        T[0] = 0.3
    check_loss_gradient(f, Z, backend.asarray(T), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("loss_fn", [BinaryCrossEntropy(pos_weight=3.0), MultiLabelLogistic()],
                         ids=["bce", "ml"])
def test_logistic_extreme_logits(backend, loss_fn):
    Z = np.array([[1e4, -1e4], [-1e4, 1e4], [800.0, -800.0]])
    T = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    loss, dZ = loss_fn(backend.asarray(Z), backend.asarray(T))
    loss, dZ = B.to_float(loss), backend.numpy(dZ)
    assert np.isfinite(loss) and np.all(np.isfinite(dZ))
    # confident misses cost |x| (times pos_weight for a positive target), confident hits ~0
    if isinstance(loss_fn, BinaryCrossEntropy):
        miss = np.array([[1.0, 3.0], [3.0, 1.0], [0.0, 0.0]])
        n = 6
    else:
        miss = np.array([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]) / 2
        n = 3
    np.testing.assert_allclose(loss, (miss * 1e4).sum() / n, rtol=1e-12)
    np.testing.assert_allclose(dZ, miss * np.where(T == 1, -1.0, 1.0) / n, atol=1e-300)


def test_logistic_check_targets(backend):
    ml = MultiLabelLogistic()
    with pytest.raises(ValueError, match="0/1"):
        ml.check_targets(backend.asarray(np.array([[0.0, 0.5]])), 2)
    with pytest.raises(ValueError, match="shape"):
        ml.check_targets(backend.asarray(np.array([[0.0, 1.0]])), 3)
    bce = BinaryCrossEntropy()
    bce.check_targets(backend.asarray(np.array([[0.0, 0.5]])), 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bce.check_targets(backend.asarray(np.array([[0.0, 1.5]])), 2)
    with pytest.raises(ValueError, match="pos_weight has 3"):
        BinaryCrossEntropy(pos_weight=[1.0, 2.0, 3.0]).check_targets(backend.asarray(np.zeros((2, 2))), 2)
    with pytest.raises(ValueError, match="pos_weight"):
        BinaryCrossEntropy(pos_weight=[-1.0])
    with pytest.raises(ValueError, match="do not match"):
        bce(backend.asarray(np.zeros((2, 2))), backend.asarray(np.zeros((2, 3))))
