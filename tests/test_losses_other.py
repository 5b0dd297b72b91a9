"""Hinge, regression and hierarchical-softmax losses, on every backend of the matrix."""

from __future__ import annotations

import numpy as np
import pytest

from xpdnn import _backend as B
from xpdnn.layers.activations import Sigmoid
from xpdnn.layers.base import layer_from_config, layer_to_config
from xpdnn.losses.hierarchical import HierarchicalSoftmax, balanced_tree, huffman_tree, path_tables
from xpdnn.losses.hinge import MulticlassHinge, MultilabelHinge, SquaredMulticlassHinge
from xpdnn.losses.regression import MAE, MSE, Huber, MeanSquaredError
from xpdnn.testing import away_from, check_layer_gradients, check_loss_gradient


def _hinge_scores(rng, N, C, margin):
    """Scores (N, C) and labels (N,) with every hinge Z_j - Z_y + margin at least 1e-3 from 0."""
    y = rng.integers(0, C, N)
    Z = rng.standard_normal((N, C))
    for _ in range(100):
        gap = Z - Z[np.arange(N), y][:, None] + margin
        gap[np.arange(N), y] = 1.0
        bad = np.any(np.abs(gap) < 1e-3, axis=1)
        if not bad.any():
            return Z, y
        Z[bad] = rng.standard_normal((int(bad.sum()), C))
    raise RuntimeError("could not draw scores away from the hinges")


def _torch_reference(make, Z, *args):
    """(loss, dZ) from a torch loss module in float64; dZ is the gradient of the loss's sum."""
    torch = pytest.importorskip("torch")
    Zt = torch.tensor(Z, dtype=torch.float64, requires_grad=True)
    out = make(torch)(Zt, *[torch.as_tensor(a) for a in args])
    out.sum().backward()
    return out.detach().numpy(), Zt.grad.numpy()


# -- multiclass hinge ---------------------------------------------------------------------

def test_multiclass_hinge_worked_example(backend):
    # CS231n: scores (3.2, 5.1, -1.7), correct class 0: max(0, 5.1 - 3.2 + 1) + max(0, -1.7 - 3.2 + 1)
    Z = backend.asarray(np.array([[3.2, 5.1, -1.7], [1.3, 4.9, 2.0]]))
    y = backend.asarray(np.array([0, 1]))
    loss, dZ = MulticlassHinge(reduction="none")(Z, y)
    np.testing.assert_allclose(backend.numpy(loss), [2.9, 0.0], atol=1e-12)
    np.testing.assert_allclose(backend.numpy(dZ), [[-1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    sq = SquaredMulticlassHinge(reduction="none")(Z, y)[0]
    np.testing.assert_allclose(backend.numpy(sq), [2.9 ** 2, 0.0], atol=1e-12)


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_multiclass_hinge_matches_torch(backend, squared, reduction):
    rng = np.random.default_rng(1)
    N, C, margin = 6, 5, 0.7
    Z, y = _hinge_scores(rng, N, C, margin)
    p = 2 if squared else 1
    ref_loss, ref_dZ = _torch_reference(
        lambda t: t.nn.MultiMarginLoss(p=p, margin=margin, reduction=reduction), Z, y)
    loss, dZ = MulticlassHinge(margin, squared=squared, normalize="torch", reduction=reduction)(
        backend.asarray(Z), backend.asarray(y))
    np.testing.assert_allclose(backend.numpy(loss), ref_loss, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(backend.numpy(dZ), ref_dZ, rtol=1e-12, atol=1e-14)
    # the seeds' formula (no 1/C) is torch's loss times C, gradient included
    loss_c, dZ_c = MulticlassHinge(margin, squared=squared, reduction=reduction)(
        backend.asarray(Z), backend.asarray(y))
    np.testing.assert_allclose(backend.numpy(loss_c), C * ref_loss, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(backend.numpy(dZ_c), C * ref_dZ, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("loss_fn", [MulticlassHinge(), MulticlassHinge(0.5, normalize="torch"),
                                     SquaredMulticlassHinge(), MulticlassHinge(2.0, reduction="sum")])
def test_multiclass_hinge_gradient(backend, loss_fn):
    Z, y = _hinge_scores(np.random.default_rng(2), 5, 4, loss_fn.margin)
    dZ = check_loss_gradient(loss_fn, backend.asarray(Z), backend.asarray(y))
    assert np.any(dZ != 0)   # some hinges are active, so the check compared something


def test_multiclass_hinge_bad_targets(backend):
    loss_fn = MulticlassHinge()
    with pytest.raises(ValueError, match="class label 4"):
        loss_fn.check_targets(backend.asarray(np.array([0, 4, 1])), 4)
    with pytest.raises(ValueError, match="negative"):
        loss_fn.check_targets(backend.asarray(np.array([0, -1])), 4)
    with pytest.raises(ValueError, match="non-integer"):
        loss_fn.check_targets(backend.asarray(np.array([0.5, 1.0])), 4)
    with pytest.raises(ValueError, match="1-D"):
        loss_fn.check_targets(backend.asarray(np.zeros((3, 4), dtype=np.int64)), 4)
    with pytest.raises(ValueError, match="rows"):
        loss_fn(backend.asarray(np.zeros((3, 4))), backend.asarray(np.array([0, 1])))
    with pytest.raises(ValueError, match="normalize"):
        MulticlassHinge(normalize="classes")
    with pytest.raises(ValueError, match="reduction"):
        MulticlassHinge(reduction="avg")
    with pytest.raises(ValueError, match="margin"):
        MulticlassHinge(-1.0)


def test_hinge_configs_rebuild():
    for loss_fn in [MulticlassHinge(0.3, squared=True, normalize="torch", reduction="sum"),
                    SquaredMulticlassHinge(2.0, reduction="none"), MultilabelHinge(0.5, squared=True)]:
        config = loss_fn.get_config()
        again = type(loss_fn)(**config)
        assert again.get_config() == config
        assert vars(again) == vars(loss_fn)
    assert MulticlassHinge.classification and not MultilabelHinge.classification


# -- multi-label (attribute) hinge ------------------------------------------------------------

@pytest.mark.parametrize("squared", [False, True])
def test_multilabel_hinge_matches_formula_and_torch(backend, squared):
    rng = np.random.default_rng(3)
    Z = away_from(rng.standard_normal((6, 5)) * 2, kinks=(-1.0, 1.0))
    Y = np.where(rng.random((6, 5)) < 0.4, 1, -1)
    ref = np.maximum(0.0, 1.0 - Y * Z) ** (2 if squared else 1)
    p = 2 if squared else 1
    ref_loss, ref_dZ = _torch_reference(lambda t: (lambda Zt, Yt: t.clamp(1 - Yt * Zt, min=0).pow(p).sum(1)), Z, Y)
    np.testing.assert_allclose(ref_loss, ref.sum(axis=1), rtol=1e-12)
    loss, dZ = MultilabelHinge(squared=squared, reduction="none")(backend.asarray(Z), backend.asarray(Y))
    np.testing.assert_allclose(backend.numpy(loss), ref_loss, rtol=1e-12)
    np.testing.assert_allclose(backend.numpy(dZ), ref_dZ, rtol=1e-12, atol=1e-14)
    mean, dmean = MultilabelHinge(squared=squared)(backend.asarray(Z), backend.asarray(Y))
    np.testing.assert_allclose(float(backend.numpy(mean)), ref.sum() / 6, rtol=1e-12)
    np.testing.assert_allclose(backend.numpy(dmean), ref_dZ / 6, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("loss_fn", [MultilabelHinge(), MultilabelHinge(squared=True, reduction="sum")])
def test_multilabel_hinge_gradient(backend, loss_fn):
    rng = np.random.default_rng(4)
    Z = away_from(rng.standard_normal((4, 6)) * 1.5, kinks=(-1.0, 1.0))
    Y = np.where(rng.random((4, 6)) < 0.5, 1.0, -1.0)
    dZ = check_loss_gradient(loss_fn, backend.asarray(Z), backend.asarray(Y))
    assert np.any(dZ != 0)


def test_multilabel_hinge_rejects_bad_labels(backend):
    loss_fn = MultilabelHinge()
    good = np.array([[1, -1, 1], [-1, -1, 1]])
    assert backend.numpy(loss_fn.check_targets(backend.asarray(good), 3)).shape == (2, 3)
    with pytest.raises(ValueError, match=r"-1 and \+1.*2 \* y - 1"):
        loss_fn.check_targets(backend.asarray(np.array([[1, 0, 1], [0, 0, 1]])), 3)
    with pytest.raises(ValueError, match=r"only -1 and \+1"):
        loss_fn.check_targets(backend.asarray(np.array([[1.0, -1.0, 0.5]])), 3)
    with pytest.raises(ValueError, match="attribute columns"):
        loss_fn.check_targets(backend.asarray(good), 4)
    with pytest.raises(ValueError, match=r"shape \(N, K\)"):
        loss_fn.check_targets(backend.asarray(np.array([1, -1])), 2)
    with pytest.raises(TypeError, match="dtype"):
        loss_fn.check_targets(backend.asarray(np.array([[True, False]])), 2)
    with pytest.raises(ValueError, match="do not match"):
        loss_fn(backend.asarray(np.zeros((2, 4))), backend.asarray(good))


# -- regression ---------------------------------------------------------------------------------

REGRESSION = [
    (lambda r: MSE(reduction=r), lambda t, r: t.nn.MSELoss(reduction=r)),
    (lambda r: MAE(reduction=r), lambda t, r: t.nn.L1Loss(reduction=r)),
    (lambda r: Huber(reduction=r), lambda t, r: t.nn.HuberLoss(reduction=r)),
    (lambda r: Huber(0.3, reduction=r), lambda t, r: t.nn.HuberLoss(reduction=r, delta=0.3)),
]


@pytest.mark.parametrize("ours, theirs", REGRESSION, ids=["mse", "mae", "huber", "huber0.3"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("K", [3, 1])
def test_regression_matches_torch(backend, ours, theirs, reduction, K):
    rng = np.random.default_rng(5)
    Y = rng.standard_normal((7, K)) * 2
    T = Y + away_from(rng.standard_normal((7, K)) * 1.5, kinks=(-1.0, -0.3, 0.0, 0.3, 1.0))
    ref_loss, ref_dY = _torch_reference(lambda t: theirs(t, reduction), Y, T)
    T_in = T[:, 0] if K == 1 else T    # (N,) targets for a single output
    loss, dY = ours(reduction)(backend.asarray(Y), backend.asarray(T_in))
    np.testing.assert_allclose(backend.numpy(loss), ref_loss, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(backend.numpy(dY), ref_dY, rtol=1e-12, atol=1e-14)
    assert tuple(dY.shape) == Y.shape


def test_mse_default_is_the_mean_over_all_elements(backend):
    Y = np.array([[1.0, 2.0], [3.0, 5.0]])
    T = np.array([[0.0, 2.0], [3.0, 2.0]])
    loss, dY = MeanSquaredError()(backend.asarray(Y), backend.asarray(T))
    assert float(backend.numpy(loss)) == pytest.approx((1 + 9) / 4)
    np.testing.assert_allclose(backend.numpy(dY), 2 * (Y - T) / 4)


@pytest.mark.parametrize("make, kinks", [(lambda: MSE(), ()), (lambda: MAE(reduction="sum"), (0.0,)),
                                         (lambda: Huber(0.5), (-0.5, 0.5))], ids=["mse", "mae", "huber"])
def test_regression_gradient(backend, make, kinks):
    rng = np.random.default_rng(6)
    T = rng.standard_normal((4, 3))
    Y = T + away_from(rng.standard_normal((4, 3)), kinks=kinks, margin=1e-3)
    check_loss_gradient(make(), backend.asarray(Y), backend.asarray(T))


def test_huber_is_quadratic_inside_and_linear_outside(backend):
    D = np.array([[-3.0, -0.5, 0.2, 2.0]])
    loss, dY = Huber(1.0, reduction="none")(backend.asarray(D), backend.asarray(np.zeros_like(D)))
    np.testing.assert_allclose(backend.numpy(loss), [[2.5, 0.125, 0.02, 1.5]])
    np.testing.assert_allclose(backend.numpy(dY), [[-1.0, -0.5, 0.2, 1.0]])


def test_regression_bad_targets(backend):
    for loss_fn in (MSE(), MAE(), Huber()):
        with pytest.raises(TypeError, match="floating-point"):
            loss_fn.check_targets(backend.asarray(np.array([[1, 2]])), 2)
        with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
            loss_fn.check_targets(backend.asarray(np.zeros((4, 2))), 3)
        with pytest.raises(ValueError, match="NaN"):
            loss_fn.check_targets(backend.asarray(np.array([[0.0, np.nan]])), 2)
        assert tuple(loss_fn.check_targets(backend.asarray(np.zeros(5)), 1).shape) == (5, 1)
        with pytest.raises(ValueError, match="do not match"):
            loss_fn(backend.asarray(np.zeros((4, 2))), backend.asarray(np.zeros((4, 3))))
    with pytest.raises(ValueError, match="delta"):
        Huber(0.0)
    with pytest.raises(ValueError, match="reduction"):
        MSE(reduction="batchmean")


def test_regression_configs_rebuild():
    for loss_fn in (MSE(), MAE(reduction="sum"), Huber(0.25, reduction="none")):
        config = loss_fn.get_config()
        assert type(loss_fn)(**config).get_config() == config
    assert Huber(0.25).get_config() == {"delta": 0.25, "reduction": "mean"}


# -- seed 003: sigmoid outputs with MSE vs cross-entropy ----------------------------------------

def _bce(A, T):
    """Mean binary cross-entropy of probabilities A against 0/1 targets T, and dA."""
    xp = B.namespace(A, T)
    n = A.shape[0] * A.shape[1]
    loss = -xp.sum(T * xp.log(A) + (1.0 - T) * xp.log(1.0 - A)) / n
    return loss, (A - T) / (A * (1.0 - A)) / n


def test_sigmoid_output_gradients_mse_vs_cross_entropy(backend):
    z = np.array([[-10.0, -4.0, -1.0, 0.0, 1.5, 6.0, 10.0]])
    t = np.ones_like(z)      # every unit should output 1; the left ones are saturated and wrong
    Z, T = backend.asarray(z), backend.asarray(t)
    A, backprop = Sigmoid().forward(Z)
    check_loss_gradient(_bce, backend.asarray(np.array([[0.2, 0.7, 0.9]])), backend.asarray(np.array([[1.0, 0.0, 1.0]])))
    dz_mse = backend.numpy(backprop(MSE()(A, T)[1]))
    dz_ce = backend.numpy(backprop(_bce(A, T)[1]))
    a = backend.numpy(A)
    sigma_prime = a * (1 - a)
    n = z.size
    # cross-entropy through the sigmoid: dL/dz = (a - t) / n, no sigma'(z) factor
    np.testing.assert_allclose(dz_ce, (a - t) / n, rtol=1e-6)
    # MSE through the sigmoid: dL/dz = 2 (a - t) sigma'(z) / n = dCE/dz * sigma'(z) * 2
    np.testing.assert_allclose(dz_mse, dz_ce * sigma_prime * 2, rtol=1e-10)
    # the saturated wrong unit (z = -10, a ~ 4.5e-5): CE still pushes with ~ 1/n, MSE barely moves
    assert abs(dz_ce[0, 0]) > 0.99 / n
    assert abs(dz_mse[0, 0]) < 1e-3 * abs(dz_ce[0, 0])
    # where sigma' is largest (z = 0) the two differ only by the factor 2 * 0.25
    assert dz_mse[0, 3] == pytest.approx(0.5 * dz_ce[0, 3])


# -- hierarchical softmax -------------------------------------------------------------------------

def _hs(tree, n_in=3, C=7, **kw):
    counts = np.array([40, 1, 3, 12, 2, 7, 25, 1, 5, 9][:C]) if tree == "huffman" else None
    return HierarchicalSoftmax(n_in, C, tree=tree, class_counts=counts, dtype="float64", seed=1, **kw)


def _brute_force_probabilities(children, S):
    """P(class) by walking the tree: S (N, n_nodes) node pre-activations -> (N, C)."""
    sig = 1.0 / (1.0 + np.exp(-S))
    out = {}

    def walk(k, p):
        for (kind, j), q in zip(children[k], (sig[:, k], 1.0 - sig[:, k])):
            if kind == "leaf":
                out[j] = p * q
            else:
                walk(j, p * q)

    walk(0, np.ones(S.shape[0]))
    return np.stack([out[c] for c in range(len(out))], axis=1)


@pytest.mark.parametrize("tree", ["balanced", "huffman"])
@pytest.mark.parametrize("C", [7, 10])
def test_hierarchical_probabilities_sum_to_one(backend, tree, C):
    hs = _hs(tree, C=C)
    H = np.random.default_rng(7).standard_normal((5, 3)) * 2
    logP = backend.numpy(hs(backend.asarray(H)))
    assert logP.shape == (5, C) and np.all(logP < 0)
    np.testing.assert_allclose(np.exp(logP).sum(axis=1), 1.0, rtol=1e-12)
    children = balanced_tree(C) if tree == "balanced" else huffman_tree(hs.class_counts)
    S = H @ backend.numpy(hs.params["W"]).T + backend.numpy(hs.params["b"])
    np.testing.assert_allclose(np.exp(logP), _brute_force_probabilities(children, S), rtol=1e-12)


@pytest.mark.parametrize("tree", ["balanced", "huffman"])
def test_hierarchical_loss_is_nll_of_the_full_probabilities(backend, tree):
    hs = _hs(tree, C=10)
    rng = np.random.default_rng(8)
    H, y = rng.standard_normal((6, 3)), rng.integers(0, 10, 6)
    logP = backend.numpy(hs(backend.asarray(H)))
    loss, dH = hs(backend.asarray(H), backend.asarray(y))
    assert tuple(loss.shape) == () and tuple(dH.shape) == (6, 3)
    assert float(backend.numpy(loss)) == pytest.approx(-logP[np.arange(6), y].mean(), rel=1e-12)
    summed = _hs(tree, C=10, reduction="sum")(backend.asarray(H), backend.asarray(y))[0]
    assert float(backend.numpy(summed)) == pytest.approx(-logP[np.arange(6), y].sum(), rel=1e-12)


def test_huffman_gives_frequent_classes_shorter_paths():
    counts = np.array([500, 3, 60, 1, 1, 120, 8, 30, 2, 15, 4])
    hs = HierarchicalSoftmax(4, len(counts), tree="huffman", class_counts=counts)
    balanced = HierarchicalSoftmax(4, len(counts))
    d = hs.depths
    for a in range(len(counts)):
        for b in range(len(counts)):
            if counts[a] > counts[b]:
                assert d[a] <= d[b], (a, b, d)
    assert d[0] == 1 and d[0] < d.max()
    assert np.sum(counts * d) < np.sum(counts * balanced.depths)    # shorter expected path
    for tree in (hs, balanced):
        assert np.sum(2.0 ** -tree.depths) == pytest.approx(1.0)     # a full binary tree
        assert tree.n_nodes == len(counts) - 1 == tree.params["W"].shape[0]
    assert set(balanced.depths) == {3, 4}                            # 11 leaves: depth ceil/floor log2


@pytest.mark.parametrize("tree", ["balanced", "huffman"])
def test_hierarchical_loss_gradient(backend, tree):
    hs = _hs(tree, C=10)
    rng = np.random.default_rng(9)
    H, y = backend.asarray(rng.standard_normal((5, 3))), backend.asarray(rng.integers(0, 10, 5))
    check_loss_gradient(lambda Hv, yv: hs(Hv, yv), H, y)   # w.r.t. H
    hs.zero_grad()
    hs(H, y)
    grads = {name: backend.numpy(hs.grads[name]).copy() for name in ("W", "b")}
    for name, analytic in grads.items():
        P = backend.numpy(hs.params[name]).copy()
        numeric = np.zeros_like(P)
        for i in range(P.size):
            for sign in (1, -1):
                Q = P.copy()
                Q.reshape(-1)[i] += sign * 1e-6
                hs.params[name] = B.from_numpy(Q, like=H)
                numeric.reshape(-1)[i] += sign * float(backend.numpy(hs(H, y)[0])) / 2e-6
        hs.params[name] = B.from_numpy(P, like=H)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8, err_msg=name)
        # nodes on no label's path get no gradient
        used = np.unique(hs._nodes[backend.numpy(y)][hs._codes[backend.numpy(y)] != 0])
        unused = np.setdiff1d(np.arange(hs.n_nodes), used)
        assert np.all(analytic[unused] == 0) and np.any(analytic[used] != 0)


@pytest.mark.parametrize("tree", ["balanced", "huffman"])
def test_hierarchical_full_forward_gradient(backend, tree):
    hs = _hs(tree, C=7)
    H = backend.asarray(np.random.default_rng(10).standard_normal((3, 3)))
    check_layer_gradients(hs, H)


def test_hierarchical_loss_reads_only_the_path_nodes(backend):
    # O(depth) per example: poisoning every node off the labels' paths changes nothing
    C = 1000
    hs = HierarchicalSoftmax(4, C, dtype="float64", seed=3)
    rng = np.random.default_rng(11)
    H, y = rng.standard_normal((3, 4)), np.array([5, 517, 999])
    loss, dH = hs(backend.asarray(H), backend.asarray(y))
    on_path = np.zeros(hs.n_nodes, dtype=bool)
    on_path[hs._nodes[y][hs._codes[y] != 0]] = True
    assert on_path.sum() <= 3 * 10
    W = backend.numpy(hs.params["W"]).copy()
    W[~on_path] = np.nan
    hs.params["W"] = backend.asarray(W)
    loss2, dH2 = hs(backend.asarray(H), backend.asarray(y))
    assert float(backend.numpy(loss2)) == float(backend.numpy(loss))
    np.testing.assert_array_equal(backend.numpy(dH2), backend.numpy(dH))


def test_hierarchical_training_reduces_the_loss(backend):
    from xpdnn.layers.activations import Tanh
    from xpdnn.layers.linear import Linear
    from xpdnn.layers.sequential import Sequential
    from xpdnn.optim.sgd import SGD

    rng = np.random.default_rng(12)
    C, N = 12, 240
    centers = rng.standard_normal((C, 5)) * 2
    y_host = rng.integers(0, C, N)
    X_host = centers[y_host] + 0.3 * rng.standard_normal((N, 5))
    X, y = backend.asarray(X_host), backend.asarray(y_host)
    net = Sequential(Linear(5, 16, dtype="float64"), Tanh()).to(like=X)
    hs = HierarchicalSoftmax(16, C, tree="huffman", class_counts=np.bincount(y_host, minlength=C),
                             dtype="float64").to(like=X)
    y = hs.check_targets(y)
    opt = SGD(lr=0.5, momentum=0.9)
    losses = []
    for step in range(60):
        net.zero_grad()
        hs.zero_grad()
        H, backprop = net.forward(X, train=True)
        loss, dH = hs(H, y)
        backprop(dH)
        opt.step(net)
        opt.step(hs)
        losses.append(float(backend.numpy(loss)))
    assert losses[-1] < 0.2 * losses[0]
    logP = hs(net(X))
    accuracy = np.mean(np.argmax(backend.numpy(logP), axis=1) == y_host)
    assert accuracy > 0.9


def test_hierarchical_config_and_save_load(tmp_path):
    import xpdnn as xd

    counts = [5, 1, 9, 2, 2, 30, 7]
    hs = HierarchicalSoftmax(3, 7, tree="huffman", class_counts=counts, init="zeros", seed=4)
    hs.params["W"] += 0.5
    again = layer_from_config(layer_to_config(hs))
    assert again.get_config() == hs.get_config()
    np.testing.assert_array_equal(again._nodes, hs._nodes)
    np.testing.assert_array_equal(again._codes, hs._codes)
    xd.save(hs, tmp_path / "hs.xpd")
    loaded = xd.load(tmp_path / "hs.xpd")
    H = np.random.default_rng(13).standard_normal((4, 3)).astype(np.float32)
    np.testing.assert_array_equal(B.to_numpy(loaded(H)), B.to_numpy(hs(H)))
    assert np.all(B.to_numpy(hs.params["W"]) == np.float32(0.5))
    assert hs.output_size(3) == 7 and hs.n_in == 3 and hs.decay == ("W",)


def test_hierarchical_bad_input(backend):
    with pytest.raises(ValueError, match="class_counts"):
        HierarchicalSoftmax(3, 5, tree="huffman")
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        HierarchicalSoftmax(3, 5, tree="huffman", class_counts=[1, 2, 3])
    with pytest.raises(ValueError, match="non-negative"):
        HierarchicalSoftmax(3, 3, tree="huffman", class_counts=[1, -2, 3])
    with pytest.raises(ValueError, match="only by tree='huffman'"):
        HierarchicalSoftmax(3, 3, class_counts=[1, 2, 3])
    with pytest.raises(ValueError, match="tree must be"):
        HierarchicalSoftmax(3, 3, tree="random")
    with pytest.raises(ValueError, match="at least 2 classes"):
        HierarchicalSoftmax(3, 1)
    hs = HierarchicalSoftmax(3, 5, dtype="float64")
    with pytest.raises(ValueError, match="class label 5"):
        hs.check_targets(backend.asarray(np.array([0, 5])))
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        hs(backend.asarray(np.zeros((2, 4))), backend.asarray(np.array([0, 1])))
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        hs(backend.asarray(np.zeros((2, 3))), backend.asarray(np.array([0, 1, 2])))


def test_path_tables_pad_with_zero_codes():
    nodes, codes = path_tables(balanced_tree(5), 5)
    assert nodes.shape == codes.shape == (5, 3)
    assert np.all((codes == 0) == (np.arange(3)[None, :] >= np.count_nonzero(codes, axis=1)[:, None]))
    assert np.all(nodes[codes == 0] == 0) and np.all(nodes[:, 0] == 0)   # root first
    # every pair of classes is separated at the first node where their codes differ
    keys = {tuple(zip(n[c != 0], c[c != 0])) for n, c in zip(nodes, codes)}
    assert len(keys) == 5
