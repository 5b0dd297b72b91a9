"""Properties of xpdnn.preprocessing that its mutation run found unasserted (issue 16,
tests/MUTATION.md): the exact inverse for any feature range, the singular-covariance refusal at
NumPy's rank tolerance, refusals that name what is wrong, statistics kept per library, device
and dtype, defaults that whiten, and saved states checked in full."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import xpdnn as xd
from xpdnn import _backend as B

P = xd.preprocessing
ALL = [P.MeanSubtraction, P.Standardizer, P.MinMaxScaler, lambda: P.PCA(2), P.ZCA]
ALL_IDS = ["MeanSubtraction", "Standardizer", "MinMaxScaler", "PCA", "ZCA"]


def _data(seed=0, n=30, d=4):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + rng.standard_normal(d)


# -- MinMaxScaler ---------------------------------------------------------------------------------

@pytest.mark.parametrize("feature_range", [(0.0, 1.0), (2.0, 5.0), (-3.0, -1.0)])
def test_minmax_maps_the_training_range_onto_any_feature_range_and_back(backend, feature_range):
    """min -> low and max -> high for features of any span (here all below 1), and
    inverse_transform is the exact inverse, also for a range that is not centred on 0."""
    lo, hi = feature_range
    Xh = np.random.default_rng(1).uniform(0.0, 0.5, (20, 3)) * np.array([1.0, 0.1, 0.01])
    s = P.MinMaxScaler(feature_range).fit(backend.asarray(Xh))
    Z = backend.numpy(s.transform(backend.asarray(Xh)))
    np.testing.assert_allclose(Z.min(axis=0), lo, rtol=0, atol=1e-12)
    np.testing.assert_allclose(Z.max(axis=0), hi, rtol=0, atol=1e-12)
    expected = lo + (Xh - Xh.min(axis=0)) / (Xh.max(axis=0) - Xh.min(axis=0)) * (hi - lo)
    np.testing.assert_allclose(Z, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(backend.numpy(s.inverse_transform(backend.asarray(Z))), Xh, rtol=1e-12, atol=1e-14)


def test_minmax_constant_feature_goes_to_the_middle_and_is_only_shifted():
    """A feature constant on the training set maps to the middle of the range; other values of
    it move by their distance from that constant, unscaled (as Standardizer only centres a
    constant feature), and fitting it raises no floating-point warning."""
    X = np.array([[3.0, 0.0], [3.0, 1.0], [3.0, 2.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = P.MinMaxScaler((0.0, 4.0)).fit(X)
        Z = s.transform(np.array([[3.0, 1.0], [3.5, 1.0], [1.0, 1.0]]))
    np.testing.assert_array_equal(Z[:, 0], [2.0, 2.5, 0.0])


def test_minmax_feature_range_takes_any_pair_and_refuses_an_empty_one():
    X = _data(2)
    ref = P.MinMaxScaler((0.0, 2.0)).fit(X).transform(X)
    for pair in ([0, 2], np.array([0.0, 2.0]), iter([0, 2])):
        s = P.MinMaxScaler(pair)
        assert s.feature_range == (0.0, 2.0)
        np.testing.assert_array_equal(s.fit(X).transform(X), ref)
    for pair in ((1.0, 1.0), (2.0, 1.0)):
        with pytest.raises(ValueError, match="low < high"):
            P.MinMaxScaler(pair)


# -- whitening: defaults and the singular-covariance check ------------------------------------------

def test_default_eps_whitens_to_unit_variance():
    """PCA(whiten=True) and ZCA() with their default eps (1e-5) give (nearly) unit variance on
    data whose variances are of order 1: eps is a small regularizer, not a scale."""
    X = _data(3, n=400, d=3)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    for t in (P.PCA(whiten=True), P.ZCA()):
        Z = t.fit_transform(X)
        np.testing.assert_allclose(np.cov(Z.T, bias=True), np.eye(3), atol=1e-3)


def test_zca_is_u_diag_rsqrt_s_plus_eps_u_t():
    """The docstring's formula with eps = 0.5, against NumPy's eigendecomposition."""
    X = _data(4, n=50, d=3)
    Xc = X - X.mean(axis=0)
    S, U = np.linalg.eigh(Xc.T @ Xc / len(X))
    W = U @ np.diag(1 / np.sqrt(S + 0.5)) @ U.T
    z = P.ZCA(eps=0.5).fit(X)
    np.testing.assert_allclose(z.transform(X), Xc @ W, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(z.inverse_transform(z.transform(X)), X, rtol=1e-10, atol=1e-12)


def _diagonal_covariance_data(variances):
    """4 rows whose columns are scaled orthogonal +-1 patterns: mean 0 and covariance exactly
    diag(variances), so its eigenvalues are exact."""
    h = np.array([[1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=float).T
    return h[:, :len(variances)] * np.sqrt(np.asarray(variances, dtype=float))


@pytest.mark.parametrize("make", [lambda: P.PCA(whiten=True, eps=0.0), lambda: P.ZCA(eps=0.0)], ids=["PCA", "ZCA"])
def test_whitening_with_eps_0_refuses_variances_below_the_rank_tolerance(make):
    """With eps = 0 whitening divides by sqrt(variance): a variance below NumPy's rank tolerance
    ``S.max() * D * eps_float64`` (D = 3 here) counts as zero and is refused; one above is kept.
    An all-constant training set (every variance exactly 0) is refused too."""
    name = "PCA whitening" if isinstance(make(), P.PCA) else "ZCA whitening"
    for small in (2e-16, 6e-16):                      # below 1 * 3 * 2.3e-16
        with pytest.raises(ValueError, match=f"singular.*{name} needs eps > 0"):
            make().fit(_diagonal_covariance_data([1.0, 1e-2, small]))
    Z = make().fit_transform(_diagonal_covariance_data([1.0, 1e-2, 1e-15]))
    assert np.all(np.isfinite(Z))
    with pytest.raises(ValueError, match=f"{name} needs eps > 0"):
        make().fit(np.ones((5, 3)))


def test_pca_checks_only_its_kept_components_and_only_when_whitening():
    X = _diagonal_covariance_data([1.0, 1e-2, 0.0])
    assert np.all(np.isfinite(P.PCA(2, whiten=True, eps=0.0).fit_transform(X)))
    np.testing.assert_allclose(P.PCA(3, eps=0.0).fit_transform(X)[:, :2], X[:, :2], atol=1e-12)


# -- sizes, dtypes and refusals ------------------------------------------------------------------------

@pytest.mark.parametrize("make, least", [(P.Standardizer, 1), (P.MinMaxScaler, 1), (lambda: P.PCA(1), 2),
                                         (P.ZCA, 2)], ids=["Standardizer", "MinMaxScaler", "PCA", "ZCA"])
def test_fit_accepts_exactly_min_samples(make, least):
    X = _data(5, n=least + 1, d=1)
    make().fit(X[:least])
    name = type(make()).__name__
    with pytest.raises(ValueError, match=f"{name} needs at least {least} sample.* got {least - 1}$"):
        make().fit(X[:least - 1])


def test_standardizer_with_eps_0_only_centres_a_constant_feature():
    X = np.array([[1.0, 5.0], [3.0, 5.0]])
    Z = P.Standardizer(eps=0.0).fit_transform(X)
    np.testing.assert_array_equal(Z, [[-1.0, 0.0], [1.0, 0.0]])


@pytest.mark.parametrize("make", ALL, ids=ALL_IDS)
def test_refusals_name_the_argument_the_class_and_the_sizes(make):
    t = make()
    name = type(t).__name__
    with pytest.raises(P.NotFittedError, match=f"^{name} is not fitted yet: call fit"):
        t.transform(np.zeros((2, 4)))
    with pytest.raises(P.NotFittedError, match=f"^{name} is not fitted yet: nothing to save"):
        t.get_state()
    with pytest.raises(TypeError, match="^X must hold real numbers, got dtype complex128"):
        t.fit(np.ones((5, 4), dtype=complex))
    with pytest.raises(ValueError, match="^X must be 2-D"):
        t.fit(np.ones(5))
    t.fit(_data(6))
    k = t.output_size()
    with pytest.raises(ValueError, match=f"^X has 3 features but {name} was fitted on data with 4 features$"):
        t.transform(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="^X must hold real numbers, got dtype complex128"):
        t.transform(np.ones((2, 4), dtype=complex))
    with pytest.raises(TypeError, match="^Z must be an array .* got float"):
        t.inverse_transform(3.0)
    with pytest.raises(ValueError, match="^Z must be 2-D"):
        t.inverse_transform(np.zeros((2, k, 1)))
    suffix = "" if k == 4 else f" \\(it outputs {k}\\)"
    with pytest.raises(ValueError, match=f"^Z has {k + 1} features but {name} was fitted on data with 4 "
                                         f"features{suffix}$"):
        t.inverse_transform(np.zeros((2, k + 1)))
    with pytest.raises(ValueError, match=f"invalid parameter\\(s\\) \\['nope'\\] for {name};"):
        t.set_params(nope=1)


def test_boolean_input_is_taken_as_0_and_1():
    X = np.array([[True, False], [False, False], [True, True]])
    Z = P.MeanSubtraction().fit(X).transform(X)            # float32 out, as integer input
    assert Z.dtype == np.float32
    np.testing.assert_allclose(Z, X - X.mean(axis=0), rtol=1e-6)


def test_repr_lists_the_configuration():
    assert repr(P.Standardizer(eps=0.5)) == "Standardizer(eps=0.5)"
    assert repr(P.PCA(2, whiten=True)) == "PCA(n_components=2, whiten=True, eps=1e-05)"
    assert repr(P.MinMaxScaler((0.0, 2.0))) == "MinMaxScaler(feature_range=[0.0, 2.0])"


# -- statistics per library, device and dtype ------------------------------------------------------------

def test_statistics_are_converted_per_library_and_dtype():
    """Fitted on NumPy float64, applied to float32 then float64 tensors: each result equals the
    NumPy one in its own dtype (no float32 copy of the statistics serves a float64 input)."""
    torch = pytest.importorskip("torch")
    X = _data(7)
    t = P.PCA(3).fit(X)
    ref = t.transform(X)
    for dtype, rtol in ((torch.float32, 1e-5), (torch.float64, 1e-13), (torch.float32, 1e-5)):
        Z = t.transform(torch.from_numpy(X).to(dtype))
        assert isinstance(Z, torch.Tensor) and Z.dtype == dtype
        np.testing.assert_allclose(Z.numpy(), ref, rtol=rtol, atol=rtol)


def test_statistics_follow_the_input_device():
    """array-api-strict has three devices: statistics fitted on one are used on each input's own."""
    aas = pytest.importorskip("array_api_strict")
    X = _data(8)
    t = P.Standardizer().fit(aas.asarray(X))
    ref = t.transform(X)
    for name in ("device1", "device2", "CPU_DEVICE", "device1"):
        dev = aas.Device(name)
        Z = t.transform(aas.asarray(X, device=dev))
        assert Z.device == dev
        np.testing.assert_allclose(B.to_numpy(Z), ref, rtol=1e-14)


# -- saved states ----------------------------------------------------------------------------------

def test_state_without_config_uses_the_defaults_and_arrays_become_float64():
    meta, arrays = P.PCA(2).fit(_data(9)).get_state()
    assert all(a.dtype == np.float64 for a in arrays.values())
    meta = {k: v for k, v in meta.items() if k != "config"}
    meta["type"] = "PCA"
    t = P.Transformer.from_state(meta, {k: v.astype(np.float32) for k, v in arrays.items()})
    assert t.get_config() == P.PCA().get_config()
    for name in ("components_", "mean_", "explained_variance_"):
        assert getattr(t, name).dtype == np.float64, name
    with pytest.raises(ValueError, match="^unknown transformer type 'Nope'"):
        P.Transformer.from_state({**meta, "type": "Nope"}, arrays)


def test_pca_state_with_inconsistent_shapes_is_refused():
    meta, arrays = P.PCA(2).fit(_data(10)).get_state()
    D = meta["n_features"]
    bad = [
        ("components", np.zeros(D), "components have shape \\(4,\\), expected \\(k, 4\\)"),
        ("components", np.zeros((2, D + 1)), "components have shape \\(2, 5\\), expected \\(k, 4\\)"),
        ("mean", np.zeros(D + 1), "mean/variance shapes do not match the components"),
        ("variance", np.zeros(3), "mean/variance shapes do not match the components"),
    ]
    for name, value, message in bad:
        with pytest.raises(ValueError, match=f"^PCA state: {message}"):
            P.PCA.from_state(meta, {**arrays, name: value})
    meta, arrays = P.Standardizer().fit(_data(10)).get_state()
    with pytest.raises(ValueError, match="^Standardizer state: array 'scale' has shape \\(3,\\), expected 4 rows"):
        P.Standardizer.from_state(meta, {**arrays, "scale": np.ones(3)})
