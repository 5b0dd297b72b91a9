import json

import numpy as np
import pytest

from xpdnn import _backend as B
from xpdnn.preprocessing import (PCA, ZCA, MeanSubtraction, MinMaxScaler, NotFittedError, Standardizer,
                                 Transformer, transformer_from_state)


def correlated(n=200, d=5, seed=0):
    """Host (n, d) data with correlated features of different scales and a non-zero mean."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((d, d)) * np.linspace(0.5, 3.0, d)
    return rng.standard_normal((n, d)) @ A + np.arange(1.0, d + 1.0) * 4


ALL = [MeanSubtraction(), MeanSubtraction(per_feature=False), Standardizer(), MinMaxScaler(),
       PCA(3), PCA(whiten=True), ZCA()]


def fresh(t):
    return type(t)(**t.get_config())


def test_mean_subtraction_per_feature_and_global(backend):
    Xh = correlated()
    X = backend.asarray(Xh)
    Z = MeanSubtraction().fit_transform(X)
    assert B.namespace(Z) is backend.xp
    np.testing.assert_allclose(backend.numpy(Z).mean(axis=0), 0, atol=1e-10)
    G = MeanSubtraction(per_feature=False).fit(X)
    Zg = backend.numpy(G.transform(X))
    np.testing.assert_allclose(Zg, Xh - Xh.mean(), atol=1e-10)
    # one global mean: the per-feature means stay different
    assert np.ptp(Zg.mean(axis=0)) > 1.0


def test_standardizer_zero_mean_unit_std_and_constant_feature(backend):
    Xh = correlated()
    Xh[:, 2] = 7.0
    Z = backend.numpy(Standardizer().fit_transform(backend.asarray(Xh)))
    np.testing.assert_allclose(Z.mean(axis=0), 0, atol=1e-10)
    np.testing.assert_allclose(np.delete(Z.std(axis=0), 2), 1, rtol=1e-10)
    np.testing.assert_array_equal(Z[:, 2], 0.0)


def test_minmax_scales_training_range_to_minus_one_one(backend):
    Xh = correlated()
    Xh[:, 1] = -3.0
    s = MinMaxScaler().fit(backend.asarray(Xh))
    Z = backend.numpy(s.transform(backend.asarray(Xh)))
    np.testing.assert_allclose(np.delete(Z.min(axis=0), 1), -1, atol=1e-12)
    np.testing.assert_allclose(np.delete(Z.max(axis=0), 1), 1, atol=1e-12)
    np.testing.assert_array_equal(Z[:, 1], 0.0)
    lo, hi = Xh.min(axis=0), Xh.max(axis=0)
    beyond = backend.numpy(s.transform(backend.asarray((hi + (hi - lo))[None, :])))
    np.testing.assert_allclose(np.delete(beyond[0], 1), 3.0, rtol=1e-12)
    np.testing.assert_allclose(backend.numpy(MinMaxScaler((0, 1)).fit_transform(backend.asarray(Xh))).max(), 1.0)


@pytest.mark.parametrize("t", ALL, ids=repr)
def test_inverse_transform_round_trip(backend, t):
    Xh = correlated()
    X = backend.asarray(Xh)
    t = fresh(t)
    Z = t.fit_transform(X)
    back = backend.numpy(t.inverse_transform(Z))
    if isinstance(t, PCA) and t.n_components is not None:
        # a reconstruction from 3 of 5 components loses exactly the discarded variance
        err = ((back - Xh) ** 2).sum(axis=1).mean()
        ev = np.linalg.eigvalsh(np.cov(Xh.T, bias=True))[::-1]
        np.testing.assert_allclose(err, ev[3:].sum(), rtol=1e-8)
    else:
        np.testing.assert_allclose(back, Xh, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("t", ALL, ids=repr)
def test_float32_in_float32_out_and_integer_input(backend, t):
    Xh = correlated().astype(np.float32)
    t = fresh(t).fit(backend.asarray(Xh))
    Z = t.transform(backend.asarray(Xh))
    assert B.dtype_name(Z.dtype) == "float32"
    Zi = t.transform(backend.asarray(np.round(Xh).astype(np.int32)))
    assert B.dtype_name(Zi.dtype) == "float32"
    assert Z.shape == (Xh.shape[0], t.output_size())


def test_pca_matches_sklearn(backend):
    decomposition = pytest.importorskip("sklearn.decomposition")
    Xh = correlated(n=300, d=6)
    sk = decomposition.PCA(n_components=4).fit(Xh)
    ours = PCA(4).fit(backend.asarray(Xh))
    C = backend.numpy(ours.components_)
    signs = np.sign(np.sum(C * sk.components_, axis=1))
    assert np.all(signs != 0)
    np.testing.assert_allclose(C * signs[:, None], sk.components_, atol=1e-8)
    np.testing.assert_allclose(backend.numpy(ours.explained_variance_ratio_), sk.explained_variance_ratio_, rtol=1e-8)
    Xt = correlated(n=50, d=6, seed=1)
    np.testing.assert_allclose(backend.numpy(ours.transform(backend.asarray(Xt))) * signs, sk.transform(Xt), atol=1e-8)
    # components ordered by decreasing variance; the ratios sum to 1 with all components
    ev = backend.numpy(ours.explained_variance_)
    assert np.all(np.diff(ev) < 0)
    full = PCA().fit(backend.asarray(Xh))
    np.testing.assert_allclose(backend.numpy(full.explained_variance_ratio_).sum(), 1.0, rtol=1e-12)


def test_pca_whitening_matches_sklearn_and_has_identity_covariance(backend):
    decomposition = pytest.importorskip("sklearn.decomposition")
    Xh = correlated(n=300, d=6)
    N = Xh.shape[0]
    sk = decomposition.PCA(whiten=True).fit(Xh)
    ours = PCA(whiten=True, eps=0.0).fit(backend.asarray(Xh))
    Z = backend.numpy(ours.transform(backend.asarray(Xh)))
    signs = np.sign(np.sum(backend.numpy(ours.components_) * sk.components_, axis=1))
    # the texts' covariance divides by N, scikit-learn's by N - 1
    np.testing.assert_allclose(Z * signs, sk.transform(Xh) * np.sqrt(N / (N - 1)), atol=1e-8)
    np.testing.assert_allclose(Z.T @ Z / N, np.eye(6), atol=1e-8)
    # eps > 0 shrinks the low-variance directions below unit variance
    Ze = backend.numpy(PCA(whiten=True, eps=1.0).fit_transform(backend.asarray(Xh)))
    var = (Ze ** 2).mean(axis=0)
    assert np.all(var < 1) and var[-1] < var[0]


def test_zca_whitening(backend):
    Xh = correlated(n=300, d=6)
    N = Xh.shape[0]
    z = ZCA(eps=1e-10).fit(backend.asarray(Xh))
    Z = backend.numpy(z.transform(backend.asarray(Xh)))
    np.testing.assert_allclose(Z.T @ Z / N, np.eye(6), atol=1e-6)
    # the texts' recipe: Xc U diag(1/sqrt(S + eps)) U^T
    Xc = Xh - Xh.mean(axis=0)
    U, S, _ = np.linalg.svd(Xc.T @ Xc / N)
    np.testing.assert_allclose(Z, Xc @ U @ np.diag(1 / np.sqrt(S + 1e-10)) @ U.T, atol=1e-6)
    # ZCA stays closest to the input among whitenings: each feature correlates with its own
    corr = np.array([np.corrcoef(Z[:, j], Xh[:, j])[0, 1] for j in range(6)])
    assert np.all(corr > 0.3)
    with pytest.raises(ValueError, match="eps > 0"):
        ZCA(eps=0.0).fit(backend.asarray(np.c_[Xh, Xh[:, :1]]))
    with pytest.raises(ValueError, match="eps > 0"):
        PCA(whiten=True, eps=0.0).fit(backend.asarray(np.c_[Xh, Xh[:, :1]]))
    assert PCA(6, whiten=True, eps=0.0).fit(backend.asarray(np.c_[Xh, Xh[:, :1]])).output_size() == 6


def test_common_mistake_fit_before_split_leaks_the_test_set(backend):
    Xh = correlated(n=400)
    train, test = Xh[:300], Xh[300:] + 5.0      # the test part is shifted
    right = Standardizer().fit(backend.asarray(train))
    wrong = Standardizer().fit(backend.asarray(np.concatenate([train, test])))
    Zr = backend.numpy(right.transform(backend.asarray(train)))
    Zw = backend.numpy(wrong.transform(backend.asarray(train)))
    np.testing.assert_allclose(Zr.mean(axis=0), 0, atol=1e-10)
    assert np.abs(Zw.mean(axis=0)).min() > 0.05
    # the training features of the wrong pipeline depend on the test data, the right one's do not
    test2 = test + 10.0
    wrong2 = Standardizer().fit(backend.asarray(np.concatenate([train, test2])))
    assert np.abs(backend.numpy(wrong2.transform(backend.asarray(train))) - Zw).max() > 0.1
    right2 = Standardizer().fit(backend.asarray(train))
    np.testing.assert_array_equal(backend.numpy(right2.transform(backend.asarray(train))), Zr)


@pytest.mark.parametrize("t", ALL, ids=repr)
def test_errors(backend, t):
    Xh = correlated()
    with pytest.raises(NotFittedError, match="not fitted"):
        fresh(t).transform(backend.asarray(Xh))
    assert issubclass(NotFittedError, ValueError)
    with pytest.raises(NotFittedError):
        fresh(t).get_state()
    fitted = fresh(t).fit(backend.asarray(Xh))
    with pytest.raises(ValueError, match="4 features .* fitted on data with 5 features"):
        fitted.transform(backend.asarray(Xh[:, :4]))
    with pytest.raises(ValueError, match="2-D"):
        fitted.transform(backend.asarray(Xh[0]))
    bad = Xh.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fresh(t).fit(backend.asarray(bad))
    with pytest.raises(ValueError, match="at least"):
        fresh(t).fit(backend.asarray(Xh[:0]))


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_components"):
        PCA(0)
    with pytest.raises(ValueError, match="only 5 features"):
        PCA(6).fit(correlated())
    with pytest.raises(ValueError, match="feature_range"):
        MinMaxScaler((1, -1))
    with pytest.raises(ValueError, match="eps"):
        ZCA(eps=-1)
    with pytest.raises(TypeError, match="must be an array"):
        Standardizer().fit("abc")


@pytest.mark.parametrize("t", ALL, ids=repr)
def test_state_round_trip(backend, t):
    Xh = correlated()
    t = fresh(t).fit(backend.asarray(Xh))
    meta, arrays = t.get_state()
    json.dumps(meta)
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float64 for a in arrays.values())
    again = Transformer.from_state(json.loads(json.dumps(meta)), {k: v.copy() for k, v in arrays.items()})
    assert type(again) is type(t)
    same = type(t).from_state(meta, arrays)
    Xt = backend.asarray(correlated(n=20, seed=3))
    expected = backend.numpy(t.transform(Xt))
    np.testing.assert_allclose(backend.numpy(again.transform(Xt)), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(backend.numpy(same.transform(Xt)), expected, rtol=1e-12, atol=1e-12)
    assert B.namespace(again.transform(Xt)) is backend.xp


def test_state_errors():
    t = Standardizer().fit(correlated())
    meta, arrays = t.get_state()
    with pytest.raises(ValueError, match="not a PCA"):
        PCA.from_state(meta, arrays)
    with pytest.raises(ValueError, match="unknown transformer type"):
        transformer_from_state({**meta, "type": "Nope"}, arrays)
    with pytest.raises(ValueError, match="needs arrays"):
        transformer_from_state(meta, {"mean": arrays["mean"]})
    with pytest.raises(ValueError, match="rows"):
        transformer_from_state({**meta, "n_features": 4}, arrays)


def test_fit_on_one_backend_transform_on_another(backend):
    Xh = correlated()
    t = PCA(2, whiten=True).fit(Xh)
    Z = t.transform(backend.asarray(Xh))
    assert B.namespace(Z) is backend.xp
    np.testing.assert_allclose(backend.numpy(Z), t.transform(Xh), rtol=1e-10, atol=1e-12)
