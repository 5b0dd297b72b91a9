"""Properties of xpdnn.losses that its mutation run found unasserted (issue 16, tests/MUTATION.md):
the mean reduction's denominator that data-parallel training combines over the ranks, the
overflow-free softplus, and what the losses print and refuse."""

from __future__ import annotations

import numpy as np
import pytest

import xpdnn as xd
from xpdnn import _backend as B
from xpdnn.losses.base import Loss
from xpdnn.losses.binary import softplus
from xpdnn.losses.cross_entropy import SoftmaxCrossEntropy
from xpdnn.losses.hierarchical import HierarchicalSoftmax

torch = pytest.importorskip("torch")


def _labels_case(seed=0, N=12, C=4):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((N, C))
    y = rng.integers(0, C, N)
    y[[1, 5, 6]] = [3, 2, 3]
    return Z, y


# -- the mean's denominator: the sum over the shards of each shard's sum, divided by it, is the mean --

CE_CASES = [dict(), dict(weight=[0.5, 2.0, 1.0, 3.0]), dict(ignore_index=3), dict(ignore_index=3, weight=[0.5, 2.0, 1.0, 3.0]),
            dict(ignore_index=-1), dict(weight=[1.0, 1.0, 1.0, 1.0], label_smoothing=0.2)]


@pytest.mark.parametrize("kwargs", CE_CASES, ids=lambda k: ",".join(k) or "plain")
def test_cross_entropy_mean_is_the_sum_over_the_denominator_on_any_split(backend, kwargs):
    """torch.nn.CrossEntropyLoss's weighted mean: ``sum_i w_{y_i} l_i / sum_i w_{y_i}`` over the
    kept rows; ``mean_denominator`` gives that divisor (None where it is the row count), so
    shards combine exactly: (sum of the shards' sums) / (sum of their denominators)."""
    Z, y = _labels_case()
    if kwargs.get("ignore_index") == -1:
        y[[0, 4]] = -1
    mean = SoftmaxCrossEntropy(reduction="mean", **kwargs)
    total = SoftmaxCrossEntropy(reduction="sum", **kwargs)
    Zb, yb = backend.asarray(Z), backend.asarray(y)
    loss = float(backend.numpy(mean(Zb, yb)[0]))
    den = mean.mean_denominator(yb)
    kept = y != kwargs.get("ignore_index", -100)
    w = np.asarray(kwargs.get("weight", np.ones(4)))
    if "weight" in kwargs or "ignore_index" in kwargs:
        assert float(backend.numpy(den)) == pytest.approx(float(np.sum(w[y[kept]])), rel=1e-15)
        den_value = float(backend.numpy(den))
    else:
        assert den is None
        den_value = len(y)
    assert loss == pytest.approx(float(backend.numpy(total(Zb, yb)[0])) / den_value, rel=1e-12)
    ref = torch.nn.CrossEntropyLoss(weight=torch.tensor(w), ignore_index=kwargs.get("ignore_index", -100),
                                    label_smoothing=kwargs.get("label_smoothing", 0.0))
    assert loss == pytest.approx(float(ref(torch.from_numpy(Z), torch.from_numpy(y))), rel=1e-12)
    shards = [slice(0, 5), slice(5, 12)]
    sums = sum(float(backend.numpy(total(backend.asarray(Z[s]), backend.asarray(y[s]))[0])) for s in shards)
    if den is not None:
        dens = sum(float(backend.numpy(mean.mean_denominator(backend.asarray(y[s])))) for s in shards)
        assert dens == pytest.approx(den_value, rel=1e-15)
    assert sums / den_value == pytest.approx(loss, rel=1e-12)


def test_mean_denominator_is_none_for_row_means_and_1_for_sums():
    """None: the loss is a plain mean over rows (or elements), so shards combine by row count;
    1: a plain sum; probability targets and reductions other than mean never weight."""
    y = np.array([0, 1, 2])
    Q = np.full((3, 3), 1 / 3)
    for loss in (xd.MSE(), xd.MAE(), xd.Huber(), xd.BinaryCrossEntropy(), xd.MulticlassHinge(),
                 SoftmaxCrossEntropy(), SoftmaxCrossEntropy(reduction="none")):
        assert loss.mean_denominator(y) is None, loss
    for loss in (xd.MSE(reduction="sum"), xd.BinaryCrossEntropy(reduction="sum"),
                 SoftmaxCrossEntropy(reduction="sum"), SoftmaxCrossEntropy(weight=[1, 2, 3], reduction="sum"),
                 SoftmaxCrossEntropy(ignore_index=0, reduction="sum")):
        assert loss.mean_denominator(y) == 1 and type(loss.mean_denominator(y)) is int, loss
    assert SoftmaxCrossEntropy(weight=[1, 2, 3]).mean_denominator(Q) is None
    assert SoftmaxCrossEntropy(weight=[1, 2, 3], reduction="none").mean_denominator(y) is None


def test_mean_denominator_of_an_all_ignored_shard_is_0():
    y = np.array([2, 2, 2])
    for kwargs in (dict(ignore_index=2), dict(ignore_index=2, weight=[1.0, 2.0, 3.0])):
        den = SoftmaxCrossEntropy(**kwargs).mean_denominator(y)
        assert den.shape == () and float(den) == 0.0
    den = SoftmaxCrossEntropy(weight=[1.0, 2.0, 4.0]).mean_denominator(np.array([2, 0, 2]))
    assert den.dtype == np.float64 and float(den) == 9.0


# -- small pieces ----------------------------------------------------------------------------------------

def test_softplus_is_log1p_exp_without_overflow():
    x = np.array([-1000.0, -30.0, -1.0, 0.0, 1e-3, 2.0, 30.0, 1000.0])
    y = softplus(x)
    np.testing.assert_allclose(y[1:-1], np.log1p(np.exp(x[1:-1])), rtol=1e-15, atol=0)
    assert y[0] == 0.0 and y[-1] == 1000.0
    np.testing.assert_allclose(y[:-1], torch.nn.functional.softplus(torch.from_numpy(x[:-1]), threshold=1e9).numpy(),
                               rtol=1e-15, atol=0)             # torch's exp overflows at 1000


def test_the_loss_base_class_computes_nothing():
    with pytest.raises(NotImplementedError):
        Loss()(np.zeros((2, 2)), np.zeros(2))
    assert Loss().get_config() == {} and Loss().check_targets("y", 3) == "y"


def test_hinge_losses_print_their_configuration():
    assert repr(xd.MulticlassHinge(0.5, squared=True, normalize="torch", reduction="sum")) == \
        "MulticlassHinge(margin=0.5, squared=True, normalize='torch', reduction='sum')"
    assert repr(xd.MultilabelHinge()) == "MultilabelHinge(margin=1.0, squared=False, reduction='mean')"


# -- hinge losses ----------------------------------------------------------------------------------

def test_hinge_mean_over_one_row_is_that_rows_loss():
    Z, y = np.array([[2.0, 1.5, -1.0]]), np.array([0])
    for loss in (xd.MulticlassHinge(), xd.MultilabelHinge()):
        target = y if isinstance(loss, xd.MulticlassHinge) else np.array([[1, -1, 1]])
        mean, dmean = loss(Z, target)
        total, dtotal = type(loss)(reduction="sum")(Z, target)
        assert float(mean) == float(total) > 0
        np.testing.assert_array_equal(dmean, dtotal)
    assert float(xd.MulticlassHinge()(np.zeros((0, 3)), np.zeros(0, dtype=np.int64))[0]) == 0.0


@pytest.mark.parametrize("margin, p", [(0.5, 2), (0.0, 1), (2.0, 1)])
def test_multiclass_hinge_torch_normalized_equals_multi_margin_loss(margin, p):
    Z, y = _labels_case(3)
    make = (lambda **k: xd.SquaredMulticlassHinge(margin, **k)) if p == 2 else \
        (lambda **k: xd.MulticlassHinge(margin, **k))
    loss, dZ = make(normalize="torch")(Z, y)
    z = torch.from_numpy(Z).requires_grad_(True)
    ref = torch.nn.MultiMarginLoss(p=p, margin=margin)(z, torch.from_numpy(y))
    ref.backward()
    assert float(loss) == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(dZ, z.grad.numpy(), rtol=1e-12, atol=1e-15)
    plain = make()(Z, y)[0]
    assert float(plain) == pytest.approx(4 * ref.item(), rel=1e-12)     # C = 4: not divided by C


def test_multilabel_hinge_default_is_the_plain_hinge():
    Z, y = np.array([[-1.0, 2.0, 0.5]]), np.array([[1, -1, 1]])
    loss, dZ = xd.MultilabelHinge()(Z, y)
    assert float(loss) == 2.0 + 3.0 + 0.5
    np.testing.assert_array_equal(dZ, [[-1.0, 1.0, -1.0]])
    assert float(xd.MultilabelHinge(margin=0.0)(Z, y)[0]) == 1.0 + 2.0


def test_hinge_refusals_name_the_problem():
    with pytest.raises(ValueError, match="^class label|contains class label 4"):
        xd.MulticlassHinge()(np.zeros((2, 4)), np.array([0, 4]))          # checked by default
    for make in (xd.MulticlassHinge, xd.MultilabelHinge):
        with pytest.raises(ValueError, match="^margin must be >= 0, got -1.0$"):
            make(-1.0)
    with pytest.raises(ValueError, match=r"^labels must be a 1-D array of class indices, got shape \(2, 1\)$"):
        xd.MulticlassHinge()(np.zeros((2, 4)), np.zeros((2, 1), dtype=np.int64))
    with pytest.raises(ValueError, match=r"^scores must have shape \(N, C\), got \(2,\)$"):
        xd.MulticlassHinge()(np.zeros(2), np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError, match="^scores have 3 rows but there are 2 targets$"):
        xd.MulticlassHinge()(np.zeros((3, 4)), np.zeros(2, dtype=np.int64))
    check = xd.MultilabelHinge().check_targets
    with pytest.raises(TypeError, match="^y must hold -1/.* got dtype uint8$"):
        check(np.ones((2, 2), dtype=np.uint8), 2)
    with pytest.raises(ValueError, match=r"^y must contain only -1 and \+1 \(0/1 labels\? map them with 2 \* y - 1\)$"):
        check(np.array([[-1, 0]]), 2)
    with pytest.raises(ValueError, match=r"^y must contain only -1 and \+1$"):
        check(np.array([[1, 2]]), 2)


# -- regression and logistic losses: configuration and refusals ---------------------------------------

def test_regression_and_logistic_losses_print_and_save_their_configuration():
    assert repr(xd.MSE()) == "MSE(reduction='mean')"
    assert repr(xd.Huber(0.5, reduction="sum")) == "Huber(delta=0.5, reduction='sum')"
    assert xd.BinaryCrossEntropy().get_config() == {"pos_weight": None, "reduction": "mean"}
    assert xd.BinaryCrossEntropy(pos_weight=[2, 3]).get_config() == {"pos_weight": [2.0, 3.0], "reduction": "mean"}
    assert xd.MultiLabelLogistic().get_config() == {"weight": None, "reduction": "mean"}
    assert xd.MultiLabelLogistic(weight=[1, 2], reduction="sum").get_config() == {"weight": [1.0, 2.0],
                                                                                   "reduction": "sum"}


def test_regression_refusals_name_the_targets():
    check = xd.MSE().check_targets
    with pytest.raises(TypeError, match="^y must be floating-point regression targets, got int64$"):
        check(np.zeros((2, 1), dtype=np.int64), 1)
    with pytest.raises(ValueError, match="^y contains NaN or Inf values$"):
        check(np.array([[0.0], [np.inf]]), 1)
    with pytest.raises(ValueError, match=r"^predictions must have shape \(N, K\), got \(3,\)$"):
        xd.MSE()(np.zeros(3), np.zeros(3))


def test_multilabel_logistic_weight_must_match_the_outputs():
    loss = xd.MultiLabelLogistic(weight=[1.0, 2.0, 3.0])
    y = np.array([[0, 1, 1]])
    assert loss.check_targets(y, 3).shape == (1, 3)
    assert loss.check_targets(y, None).shape == (1, 3)           # no model to compare with
    with pytest.raises(ValueError, match="^weight has 3 entries but the model has 4 outputs$"):
        loss.check_targets(np.array([[0, 1, 1, 0]]), 4)
    with pytest.raises(ValueError, match="^weight has 3 entries but the logits have 4 columns$"):
        loss(np.zeros((1, 4)), np.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"^logits must be 2-D \(N, C\), got shape \(4,\)$"):
        loss(np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match="^y must be a 0/1 label matrix"):
        loss.check_targets(np.array([[0, 2, 1]]), 3)


# -- softmax cross-entropy ----------------------------------------------------------------------------

def test_log_softmax_is_stable_row_by_row():
    from xpdnn.losses.cross_entropy import log_softmax

    Z = np.array([[0.0, 1.0], [1000.0, 1001.0], [-1000.0, -999.0]])
    expected = np.log(np.array([1.0, np.e]) / (1.0 + np.e))
    np.testing.assert_allclose(log_softmax(Z), np.tile(expected, (3, 1)), rtol=1e-14)


def test_probability_targets_tolerance_per_dtype_and_at_its_edge():
    from xpdnn.losses.cross_entropy import check_probability_targets as check

    assert check(np.zeros((0, 3)), 3).shape == (0, 3)
    assert check(np.array([[0.5, 0.75]]), 2, tol=0.25).shape == (1, 2)       # off by exactly tol: kept
    with pytest.raises(ValueError, match=r"^y: every row of probability targets must sum to 1; the worst row is "
                                         r"off by 0\.25 \(tolerance 0\.125\)$"):
        check(np.array([[0.5, 0.75]]), 2, tol=0.125)
    check(np.array([[0.5, 0.5 + 1e-4]], dtype=np.float32), 2)               # float32: within 1e-3
    for T in (np.array([[0.5, 0.5 + 1e-5]]), np.array([[0.5, 0.5 + 2e-3]], dtype=np.float32),
              np.array([[0.5, 1.0]], dtype=np.float32)):
        with pytest.raises(ValueError, match="^y: every row of probability targets must sum to 1"):
            check(T, 2)
    with pytest.raises(TypeError, match="^y: probability targets must be floating-point, got int64$"):
        check(np.ones((1, 2), dtype=np.int64), 2)
    with pytest.raises(ValueError, match="^y contains NaN or Inf values$"):
        check(np.array([[np.nan, 1.0]]), 2)


def test_probability_target_mean_over_one_row_and_over_none():
    Z = np.array([[1.0, 2.0, 0.5]])
    Q = np.array([[0.2, 0.5, 0.3]])
    mean, G = SoftmaxCrossEntropy()(Z, Q)
    total, Gs = SoftmaxCrossEntropy(reduction="sum")(Z, Q)
    assert float(mean) == float(total) > 0
    np.testing.assert_array_equal(G, Gs)
    loss, G = SoftmaxCrossEntropy()(np.zeros((0, 3)), np.zeros((0, 3)))
    assert float(loss) == 0.0 and G.shape == (0, 3)


def test_cross_entropy_config_and_weights_per_dtype():
    assert SoftmaxCrossEntropy().get_config()["weight"] is None
    w = [0.5, 2.0, 1.0, 3.0]
    Z, y = _labels_case(5)
    ce = SoftmaxCrossEntropy(weight=w)
    ref = torch.nn.CrossEntropyLoss(weight=torch.tensor(w, dtype=torch.float64))(torch.from_numpy(Z), torch.from_numpy(y))
    assert float(ce(Z.astype(np.float32), y)[0]) == pytest.approx(ref.item(), rel=1e-5)
    assert float(ce(Z, y)[0]) == pytest.approx(ref.item(), rel=1e-14)      # not the float32 weights
    assert ce.weights_like(Z).dtype == np.float64 and ce.weights_like(Z, np.float32).dtype == np.float32


def test_cross_entropy_follows_the_logits_device():
    """array-api-strict has three devices: weights, one-hot targets and the mean's divisor are
    made on the logits' own device."""
    aas = pytest.importorskip("array_api_strict")
    from xpdnn.losses.cross_entropy import one_hot

    Z, y = _labels_case(6)
    Q = np.eye(4)[y] * 0.9 + 0.025
    ref = SoftmaxCrossEntropy(weight=[0.5, 2.0, 1.0, 3.0])(Z, y)[0]
    ref_soft = SoftmaxCrossEntropy()(Z, Q)[0]
    for name in ("device1", "device2"):
        dev = aas.Device(name)
        Zd, yd = aas.asarray(Z, device=dev), aas.asarray(y, device=dev)
        assert one_hot(yd, 4, aas.float64).device == dev
        loss = SoftmaxCrossEntropy(weight=[0.5, 2.0, 1.0, 3.0])(Zd, yd)[0]
        assert loss.device == dev and float(loss) == pytest.approx(float(ref), rel=1e-14)
        soft = SoftmaxCrossEntropy()(Zd, aas.asarray(Q, device=dev))[0]
        assert soft.device == dev and float(soft) == pytest.approx(float(ref_soft), rel=1e-14)
    ce = SoftmaxCrossEntropy(weight=[0.5, 2.0, 1.0, 3.0])
    for name in ("device1", "device2", "device1"):
        dev = aas.Device(name)
        assert ce.weights_like(aas.asarray(Z, device=dev)).device == dev


# -- second mutation run: what the earlier tests left unasserted -----------------------------------------

def test_a_loss_without_a_reduction_attribute_is_a_plain_mean():
    """A loss that declares no ``reduction`` is taken as a row mean (the default of PyTorch's
    losses, ``reduction='mean'``): its denominator is None, never an error."""
    assert Loss().mean_denominator(np.array([0, 1, 2])) is None


@pytest.mark.parametrize("kwargs", [dict(weight=[1.0, 2.0, 4.0]), dict(weight=[1.0, 2.0, 4.0], ignore_index=1),
                                    dict(ignore_index=1)], ids=lambda k: ",".join(k))
def test_mean_denominator_lives_on_the_labels_device(kwargs):
    """array-api-strict has three devices and refuses operations that mix them: the weighted
    mean's denominator is computed on the labels' own device, and its value is
    ``sum_i w_{y_i}`` over the kept labels (torch.nn.CrossEntropyLoss's divisor)."""
    aas = pytest.importorskip("array_api_strict")
    y = np.array([0, 1, 2, 2, 1])
    ce = SoftmaxCrossEntropy(**kwargs)
    expected = float(ce.mean_denominator(y))
    w = np.asarray(kwargs.get("weight", np.ones(3)))
    assert expected == float(np.sum(w[y[y != kwargs.get("ignore_index", -100)]]))
    for name in ("device1", "device2"):
        dev = aas.Device(name)
        den = ce.mean_denominator(aas.asarray(y, device=dev))
        assert den.device == dev and den.shape == () and float(den) == expected


@pytest.mark.parametrize("make, target", [
    (lambda: xd.MultilabelHinge(), np.array([[1, -1, 1], [-1, -1, 1]])),
    (lambda: xd.MultilabelHinge(squared=True), np.array([[1, -1, 1], [-1, -1, 1]])),
    (lambda: xd.MulticlassHinge(), np.array([0, 2])),
    (lambda: SoftmaxCrossEntropy(), np.array([0, 2])),
    (lambda: xd.MSE(), np.zeros((2, 3))),
    (lambda: xd.MultiLabelLogistic(), np.array([[1, 0, 1], [0, 0, 1]])),
], ids=["multilabel", "multilabel-squared", "multiclass", "cross-entropy", "mse", "multilabel-logistic"])
def test_scores_and_targets_from_two_array_libraries_are_refused(make, target):
    """Logits and targets must come from one array library (the Array API standard does not
    define operations between arrays of different libraries): the mix is refused with a
    TypeError that names both, whichever of the two is the foreign one."""
    Z = np.array([[0.5, -1.0, 2.0], [1.0, 0.0, -0.5]])
    loss = make()
    for scores, targets in ((Z, torch.from_numpy(target)), (torch.from_numpy(Z), target)):
        with pytest.raises(TypeError, match=r"^arrays from different array libraries were mixed: "
                                            r"numpy\.ndarray, torch\.Tensor; convert them to one library first$"):
            loss(scores, targets)


def test_hierarchical_softmax_config_rebuilds_its_initial_parameters():
    """A layer's config (plain JSON values) rebuilds the same layer: with the same seed and
    initializer name the rebuilt HierarchicalSoftmax starts from the same parameters (here
    word2vec's all-zero node weights, Mikolov et al. 2013)."""
    import json

    from xpdnn.layers.base import layer_from_config, layer_to_config

    for init in ("zeros", "he", "lecun"):
        hs = HierarchicalSoftmax(3, 5, init=init, seed=7, dtype="float64")
        again = layer_from_config(json.loads(json.dumps(layer_to_config(hs))))
        assert again.get_config()["init"] == init
        np.testing.assert_array_equal(B.to_numpy(again.params["W"]), B.to_numpy(hs.params["W"]))
    assert not np.any(B.to_numpy(HierarchicalSoftmax(3, 5, init="zeros").params["W"]))


def test_hierarchical_softmax_with_a_callable_initializer_still_saves(tmp_path):
    """xpdnn.init.get passes a callable ``f(rng, n_in, n_out)`` through; a layer built with one
    still has a JSON config (the callable is not serialisable) naming a registered initializer,
    so it rebuilds, and a saved copy computes the same log-probabilities."""
    import json

    from xpdnn import init as initializers
    from xpdnn.layers.base import layer_from_config, layer_to_config

    def scaled(rng, n_in, n_out):
        return 0.1 * rng.standard_normal((n_out, n_in))

    hs = HierarchicalSoftmax(3, 6, init=scaled, seed=2, dtype="float64")
    assert hs.params["W"].shape == (5, 3)
    config = json.loads(json.dumps(layer_to_config(hs)))
    assert callable(initializers.get(config["config"]["init"]))
    again = layer_from_config(config)
    assert again.get_config() == hs.get_config()
    xd.save(hs, tmp_path / "hs.xpd")
    loaded = xd.load(tmp_path / "hs.xpd")
    H = np.random.default_rng(3).standard_normal((4, 3))
    np.testing.assert_array_equal(B.to_numpy(loaded(H)), B.to_numpy(hs(H)))


def test_class_labels_are_checked_at_their_exact_bounds(backend):
    """Class labels are integers in ``[0, C)`` (torch.nn.CrossEntropyLoss's contract); labels
    held as whole floats (a CSV column) are converted exactly, as long as a float64 holds the
    integer exactly (below 2**53); ``ignore_index`` labels are exempt from the range."""
    from xpdnn.losses.base import check_labels

    def check(y, C, **kw):
        return backend.numpy(check_labels(backend.asarray(np.asarray(y)), C, **kw))

    out = check([0.0, 2.0, 1.0], 3)
    assert out.dtype == np.int64 and out.tolist() == [0, 2, 1]
    assert check([2.0 ** 53 - 1, 0.0], None).tolist() == [2 ** 53 - 1, 0]
    for big in (2.0 ** 53, -(2.0 ** 53)):
        with pytest.raises(ValueError, match="^y contains a label too large to be a class index$"):
            check([0.0, big], None)
    for empty in (np.zeros(0), np.zeros(0, dtype=np.int64)):
        out = check(empty, 3)
        assert out.shape == (0,) and out.dtype == np.int64
    assert check([0, 2], 3).tolist() == [0, 2]                                     # C - 1 is a class
    with pytest.raises(ValueError, match=r"^y contains class label 3 but the model has only 3 outputs "
                                         r"\(labels must be in \[0, 2\]\)$"):
        check([0, 3, 1], 3)
    with pytest.raises(ValueError, match="^y contains negative class label -1$"):
        check([0, -1, 2], 3)
    with pytest.raises(ValueError, match="^y contains negative class label -2$"):
        check([5, -2], None)                                                        # no C: still >= 0
    # ignore_index: exempt wherever it lies, and a batch of nothing but ignored labels is fine
    assert check([0, -100, 2], 3, ignore_index=-100).tolist() == [0, -100, 2]
    assert check([7, 7], 3, ignore_index=7).tolist() == [7, 7]
    assert check([-100, -100], 3, ignore_index=-100).tolist() == [-100, -100]
    with pytest.raises(ValueError, match="^y contains class label 3 "):
        check([0, -100, 3], 3, ignore_index=-100)


def test_class_label_refusals_name_the_problem():
    from xpdnn.losses.base import check_labels

    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="^y contains NaN or Inf; class labels must be integers$"):
            check_labels(np.array([0.0, bad]), 3)
    with pytest.raises(ValueError, match="^y contains non-integer values; class labels must be integers$"):
        check_labels(np.array([0.0, 1.5]), 3)
    with pytest.raises(TypeError, match="^y must hold integer class labels, got dtype bool$"):
        check_labels(np.array([True, False]), 3)
    with pytest.raises(ValueError, match=r"^labels must be a 1-D array of class labels, got shape \(2, 1\)$"):
        check_labels(np.zeros((2, 1), dtype=np.int64), 3, what="labels")
    with pytest.raises(ValueError, match="^labels contains negative class label -1$"):
        check_labels(np.array([-1]), 3, what="labels")


@pytest.mark.parametrize("make", [lambda: xd.MultiLabelLogistic(), lambda: xd.MultiLabelLogistic(weight=[1.0, 2.0, 0.5]),
                                  lambda: xd.BinaryCrossEntropy()], ids=["mll", "mll-weighted", "bce"])
def test_logistic_mean_over_an_empty_batch_is_0_and_over_one_row_is_that_row(make):
    """The mean over no rows is taken as 0 with an empty gradient (an empty shard in data-parallel
    training contributes nothing), never 0/0; over one row it is that row's sum divided by the
    mean's count (1 row for torch.nn.MultiLabelSoftMarginLoss, N K elements for
    torch.nn.BCEWithLogitsLoss), and matches PyTorch."""
    loss = make()
    value, G = loss(np.zeros((0, 3)), np.zeros((0, 3)))
    assert float(value) == 0.0 and G.shape == (0, 3)
    X, T = np.array([[0.3, -2.0, 1.5]]), np.array([[1.0, 0.0, 0.0]])
    mean, G = loss(X, T)
    total, Gs = type(loss)(**{**loss.get_config(), "reduction": "sum"})(X, T)
    count = 1 if isinstance(loss, xd.MultiLabelLogistic) else 3
    assert float(mean) == pytest.approx(float(total) / count, rel=1e-15)
    np.testing.assert_allclose(G, Gs / count, rtol=1e-15)
    if isinstance(loss, xd.MultiLabelLogistic):
        w = loss.weight
        ref = torch.nn.MultiLabelSoftMarginLoss(weight=None if w is None else torch.from_numpy(w))
    else:
        ref = torch.nn.BCEWithLogitsLoss()
    assert float(mean) == pytest.approx(ref(torch.from_numpy(X), torch.from_numpy(T)).item(), rel=1e-14)


def test_huffman_ties_go_to_the_classes_first_giving_the_flattest_optimal_tree():
    """huffman_tree returns balanced_tree's format (``("node", k)`` / ``("leaf", c)``).  Every
    Huffman tree has the minimal expected path length; breaking ties in favour of the original
    classes over merged subtrees (oldest merge first) picks, among those, the one of least depth
    variance (Schwartz 1964, "Generating a canonical prefix encoding"), so equal or tied counts
    give the balanced tree where one exists."""
    from xpdnn.losses.hierarchical import balanced_tree, huffman_tree, path_tables

    assert huffman_tree([1, 1, 1, 1]) == balanced_tree(4)
    assert huffman_tree([1, 1, 2, 2]) == balanced_tree(4)           # the merged {0, 1} ties classes 2, 3
    tied = huffman_tree([2, 2, 1, 1])
    assert tied == [(("node", 1), ("node", 2)), (("leaf", 2), ("leaf", 3)), (("leaf", 0), ("leaf", 1))]
    for counts in ([1, 1, 2, 2], [2, 2, 1, 1], [3, 1, 1, 2, 2, 2]):
        depths = np.count_nonzero(path_tables(huffman_tree(counts), len(counts))[1], axis=1)
        weights, optimum = sorted(counts), 0                      # Huffman's cost: the sum of the merges
        while len(weights) > 1:
            merged = weights.pop(0) + weights.pop(0)
            optimum += merged
            weights = sorted(weights + [merged])
        assert int(np.dot(counts, depths)) == optimum
        if len(counts) == 4:
            assert list(depths) == [2, 2, 2, 2]
