"""Data preprocessing fitted on the training set only (CS231n, "Neural Networks Part 2"): mean subtraction,
standardization, min-max scaling, PCA, PCA whitening and ZCA whitening.

Every transformer follows scikit-learn's shape: ``fit(X_train)`` computes statistics from the
training set, ``transform(X)`` applies them to any set, ``fit_transform`` does both and
``inverse_transform`` maps back.  X is (N, D) in any Array API library; statistics are computed
in float64 on X's device with Array API functions only (``xp.linalg.eigh`` for the covariance),
and ``transform`` returns X's library, device and floating dtype (integer input becomes float32).

CS231n's "common pitfall" is fitting on the whole data set before the split: always split
first, ``fit`` on the training part, then ``transform`` the training, validation and test parts.

A fitted transformer is saved as ``meta, arrays = t.get_state()`` (JSON-able dict, host NumPy
arrays) and rebuilt with ``Transformer.from_state(meta, arrays)``.
"""

from __future__ import annotations

import numpy as np

from . import _backend as B

TRANSFORMERS: dict[str, type] = {}


class NotFittedError(ValueError):
    """``transform`` (or ``inverse_transform``) was called before ``fit``."""


def _check_2d(X, what="X"):
    X = B.as_array(X, what)
    if X.ndim != 2:
        raise ValueError(f"{what} must be 2-D (samples, features), got shape {tuple(X.shape)}")
    xp = B.namespace(X)
    if not (xp.isdtype(X.dtype, "real floating") or xp.isdtype(X.dtype, "integral")
            or X.dtype == xp.bool):
        raise TypeError(f"{what} must hold real numbers, got dtype {B.dtype_name(X.dtype)}")
    return X


def _check_eps(eps) -> float:
    if not float(eps) >= 0:      # also rejects NaN
        raise ValueError(f"eps must be >= 0, got {eps}")
    return float(eps)


def _as_float(X):
    """X itself when floating, else X as float32."""
    xp = B.namespace(X)
    return X if xp.isdtype(X.dtype, "real floating") else xp.astype(X, xp.float32)


class Transformer:
    """Base class.  Subclasses compute ``self._stats`` (name -> float64 array) in ``_fit`` and
    use ``self._get(name, like=X)`` in ``_transform`` / ``_inverse``."""

    min_samples = 1

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        TRANSFORMERS[cls.__name__] = cls

    def __init__(self):
        self._stats: dict | None = None
        self.n_features: int | None = None
        self._cache: dict = {}

    def get_config(self) -> dict:
        return {}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    @property
    def fitted(self) -> bool:
        return self._stats is not None

    def fit(self, X, y=None):
        """Compute the statistics from the training set X (N, D); returns ``self``.  ``y`` is
        ignored (scikit-learn's transformer protocol, so a transformer goes into a Pipeline)."""
        X = _check_2d(X)
        if X.shape[0] < self.min_samples:
            raise ValueError(f"{type(self).__name__} needs at least {self.min_samples} sample(s) to fit, "
                             f"got {X.shape[0]}")
        xp = B.namespace(X)
        X64 = xp.astype(X, xp.float64)
        B.check_finite(X64)
        self.n_features = int(X.shape[1])
        self._cache = {}
        self._stats = self._fit(xp, X64)
        return self

    def transform(self, X):
        """X (N, D) -> transformed (N, D_out) in X's library, device and floating dtype."""
        X = self._check_fitted(X)
        return self._transform(B.namespace(X), _as_float(X))

    def fit_transform(self, X, y=None, **fit_params):
        return self.fit(X).transform(X)

    def get_params(self, deep=True):
        """The constructor's arguments by name (scikit-learn's ``get_params``; ``deep`` is moot)."""
        import inspect

        names = [p.name for p in inspect.signature(type(self).__init__).parameters.values()
                 if p.name != "self" and p.kind == p.POSITIONAL_OR_KEYWORD]
        return {name: getattr(self, name) for name in names}

    def set_params(self, **params):
        """Change constructor arguments (validated as the constructor does, nothing changes on an
        error); a fitted transformer becomes unfitted, since its statistics were computed with
        the old arguments.  Returns ``self``."""
        valid = self.get_params()
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise ValueError(f"invalid parameter(s) {unknown} for {type(self).__name__}; valid: {sorted(valid)}")
        checked = type(self)(**{**valid, **params})
        for name in params:
            setattr(self, name, getattr(checked, name))
        if params:
            self._stats, self.n_features, self._cache = None, None, {}
        return self

    def inverse_transform(self, Z):
        """Transformed Z (N, D_out) -> X (N, D) in the original feature space."""
        Z = self._check_fitted(Z, self.output_size(), "Z")
        return self._inverse(B.namespace(Z), _as_float(Z))

    def output_size(self) -> int | None:
        """Number of output features (None before fit)."""
        return self.n_features

    def _check_fitted(self, X, n=None, what="X"):
        if not self.fitted:
            raise NotFittedError(f"{type(self).__name__} is not fitted yet: call fit(X_train) before transform")
        X = _check_2d(X, what)
        n = self.n_features if n is None else n
        if X.shape[1] != n:
            raise ValueError(f"{what} has {X.shape[1]} features but {type(self).__name__} was fitted "
                             f"on data with {self.n_features} features" + ("" if n == self.n_features
                                                                          else f" (it outputs {n})"))
        return X

    def _get(self, name, like):
        """Statistic ``name`` in like's library, device and dtype (cached)."""
        a = self._stats[name]
        if B.namespace(a) is B.namespace(like) and B.device(a) == B.device(like) and a.dtype == like.dtype:
            return a
        key = (name, id(B.namespace(like)), str(B.device(like)), str(like.dtype))
        if key not in self._cache:
            host = np.asarray(B.to_numpy(a), dtype=B.dtype_name(like.dtype))
            self._cache[key] = B.from_numpy(host, like=like)
        return self._cache[key]

    def _fit(self, xp, X):
        raise NotImplementedError

    def _transform(self, xp, X):
        raise NotImplementedError

    def _inverse(self, xp, Z):
        raise NotImplementedError(f"{type(self).__name__} has no inverse_transform")

    def get_state(self) -> tuple[dict, dict]:
        """(meta, arrays): JSON-able ``{"type", "config", "n_features"}`` and the fitted
        statistics as host float64 NumPy arrays.  Raises NotFittedError before fit."""
        if not self.fitted:
            raise NotFittedError(f"{type(self).__name__} is not fitted yet: nothing to save")
        meta = {"type": type(self).__name__, "config": self.get_config(), "n_features": self.n_features}
        arrays = {k: np.asarray(B.to_numpy(v), dtype=np.float64) for k, v in sorted(self._stats.items())}
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict, arrays: dict) -> "Transformer":
        """Rebuild a fitted transformer from :meth:`get_state`'s output.  Called on the base
        class it dispatches on ``meta["type"]``."""
        try:
            kind = TRANSFORMERS[meta["type"]]
        except KeyError:
            raise ValueError(f"unknown transformer type {meta.get('type')!r}; "
                             f"known: {sorted(TRANSFORMERS)}") from None
        if cls is not Transformer and kind is not cls:
            raise ValueError(f"the state describes a {meta['type']}, not a {cls.__name__}")
        t = kind(**meta.get("config", {}))
        expected = set(t._stat_names())
        if set(arrays) != expected:
            raise ValueError(f"{meta['type']} state needs arrays {sorted(expected)}, got {sorted(arrays)}")
        t.n_features = int(meta["n_features"])
        t._stats = {k: np.asarray(B.to_numpy(v), dtype=np.float64) for k, v in arrays.items()}
        t._check_state()
        return t

    def _stat_names(self):
        raise NotImplementedError

    def _check_state(self):
        for name in self._stat_names():
            if self._stats[name].ndim >= 1 and self._stats[name].shape[0] != self.n_features:
                raise ValueError(f"{type(self).__name__} state: array {name!r} has shape "
                                 f"{self._stats[name].shape}, expected {self.n_features} rows")


def transformer_from_state(meta: dict, arrays: dict) -> Transformer:
    """Rebuild any fitted transformer from ``(meta, arrays)`` written by ``get_state``."""
    return Transformer.from_state(meta, arrays)


class MeanSubtraction(Transformer):
    """``X - mean``: per feature (``per_feature=True``, ``np.mean(X, axis=0)``) or one global
    mean over all values (``per_feature=False``, CS231n's choice for images).
    X (N, D) -> (N, D)."""

    def __init__(self, per_feature: bool = True):
        super().__init__()
        self.per_feature = bool(per_feature)

    def get_config(self):
        return {"per_feature": self.per_feature}

    def _stat_names(self):
        return ("mean",)

    def _fit(self, xp, X):
        return {"mean": xp.mean(X, axis=0) if self.per_feature else xp.mean(X)}

    def _transform(self, xp, X):
        return X - self._get("mean", X)

    def _inverse(self, xp, Z):
        return Z + self._get("mean", Z)


class Standardizer(Transformer):
    """``(X - mean) / std`` per feature (population std).  Features whose std is below ``eps``
    (constant on the training set) are only centred.  X (N, D) -> (N, D)."""

    def __init__(self, eps: float = 1e-12):
        super().__init__()
        self.eps = _check_eps(eps)

    def get_config(self):
        return {"eps": self.eps}

    def _stat_names(self):
        return ("mean", "scale")

    def _fit(self, xp, X):
        std = xp.std(X, axis=0)
        return {"mean": xp.mean(X, axis=0), "scale": xp.where(std > self.eps, std, xp.ones_like(std))}

    def _transform(self, xp, X):
        return (X - self._get("mean", X)) / self._get("scale", X)

    def _inverse(self, xp, Z):
        return Z * self._get("scale", Z) + self._get("mean", Z)


class MinMaxScaler(Transformer):
    """Scale every feature linearly so the training minimum maps to ``feature_range[0]`` and
    the maximum to ``feature_range[1]`` (default [-1, 1]); constant features map to the middle.
    Values outside the training range land outside ``feature_range``.  X (N, D) -> (N, D)."""

    def __init__(self, feature_range=(-1.0, 1.0)):
        super().__init__()
        lo, hi = (float(v) for v in feature_range)
        if not lo < hi:
            raise ValueError(f"feature_range must be (low, high) with low < high, got {feature_range}")
        # kept as passed when it already is a (low, high) tuple of floats: scikit-learn's clone
        # checks that the constructor stores its arguments unchanged
        same = type(feature_range) is tuple and all(type(v) is float for v in feature_range)
        self.feature_range = feature_range if same else (lo, hi)

    def get_config(self):
        return {"feature_range": list(self.feature_range)}

    def _stat_names(self):
        return ("center", "scale")

    def _fit(self, xp, X):
        lo, hi = self.feature_range
        xmin, xmax = xp.min(X, axis=0), xp.max(X, axis=0)
        span = xmax - xmin
        scale = xp.where(span > 0, (hi - lo) / xp.where(span > 0, span, xp.ones_like(span)), xp.ones_like(span))
        # y = (x - center) * scale + mid, with center the midpoint of the training range
        return {"center": (xmin + xmax) / 2, "scale": scale}

    def _transform(self, xp, X):
        mid = sum(self.feature_range) / 2
        return (X - self._get("center", X)) * self._get("scale", X) + mid

    def _inverse(self, xp, Z):
        mid = sum(self.feature_range) / 2
        return (Z - mid) / self._get("scale", Z) + self._get("center", Z)


def _covariance_eigh(xp, X):
    """(mean (D,), eigenvalues (D,) descending and >= 0, eigenvectors (D, D) as columns)
    of the covariance ``Xc^T Xc / N``; each eigenvector's largest-magnitude entry is positive."""
    mean = xp.mean(X, axis=0)
    Xc = X - mean
    C = (Xc.T @ Xc) / X.shape[0]
    S, U = xp.linalg.eigh((C + C.T) / 2)
    S, U = xp.flip(S), xp.flip(U, axis=1)
    S = xp.maximum(S, xp.zeros_like(S))
    idx = xp.argmax(xp.abs(U), axis=0)
    pivot = xp.take_along_axis(U, idx[None, :], axis=0)
    U = U * xp.where(pivot < 0, -xp.ones_like(pivot), xp.ones_like(pivot))
    return mean, S, U


def _check_nonsingular(xp, S, what):
    """Whitening with eps=0 divides by sqrt(S): refuse (numerically) zero variances."""
    tiny = S[0] * S.shape[0] * 2.3e-16 if S.shape[0] else 0.0
    if not bool(xp.all(S > tiny)):
        raise ValueError(f"the training covariance is singular (a direction without variance): "
                         f"{what} needs eps > 0")


class PCA(Transformer):
    """Principal component analysis from the eigendecomposition of the training covariance
    ``C = Xc^T Xc / N`` (``Xc = X - mean``), components ordered by decreasing variance.

    X (N, D) -> ``Xc @ U[:, :k]`` (N, k); with ``whiten=True`` each component is divided by
    ``sqrt(S + eps)`` (PCA whitening: unit variance, decorrelated).  After fit:
    ``components_`` (k, D) (rows, the sign fixed so each row's largest-magnitude entry is
    positive), ``explained_variance_`` (k,) and ``explained_variance_ratio_`` (k,) (share of the
    total variance), ``mean_`` (D,).  ``n_components=None`` keeps all D.
    """

    min_samples = 2

    def __init__(self, n_components: int | None = None, whiten: bool = False, eps: float = 1e-5):
        super().__init__()
        if n_components is not None and int(n_components) < 1:
            raise ValueError(f"n_components must be a positive integer or None, got {n_components}")
        self.n_components = None if n_components is None else int(n_components)
        self.whiten, self.eps = bool(whiten), _check_eps(eps)

    def get_config(self):
        return {"n_components": self.n_components, "whiten": self.whiten, "eps": self.eps}

    def _stat_names(self):
        return ("mean", "components", "variance", "total_variance")

    def _check_state(self):
        s = self._stats
        if s["components"].ndim != 2 or s["components"].shape[1] != self.n_features:
            raise ValueError(f"PCA state: components have shape {s['components'].shape}, "
                             f"expected (k, {self.n_features})")
        if s["mean"].shape != (self.n_features,) or s["variance"].shape != (s["components"].shape[0],):
            raise ValueError("PCA state: mean/variance shapes do not match the components")

    def output_size(self):
        if self._stats is not None:
            return int(self._stats["components"].shape[0])
        return self.n_components

    def _fit(self, xp, X):
        D = X.shape[1]
        k = D if self.n_components is None else self.n_components
        if k > D:
            raise ValueError(f"n_components={k} but X has only {D} features")
        mean, S, U = _covariance_eigh(xp, X)
        if self.whiten and self.eps == 0:
            _check_nonsingular(xp, S[:k], "PCA whitening")
        return {"mean": mean, "components": U[:, :k].T, "variance": S[:k], "total_variance": xp.sum(S)}

    @property
    def components_(self):
        return self._stats["components"] if self.fitted else None

    @property
    def mean_(self):
        return self._stats["mean"] if self.fitted else None

    @property
    def explained_variance_(self):
        return self._stats["variance"] if self.fitted else None

    @property
    def explained_variance_ratio_(self):
        if not self.fitted:
            return None
        s = self._stats
        xp = B.namespace(s["variance"])
        total = s["total_variance"]
        return s["variance"] / xp.where(total > 0, total, xp.ones_like(total))

    def _transform(self, xp, X):
        Z = (X - self._get("mean", X)) @ self._get("components", X).T
        if self.whiten:
            Z = Z / xp.sqrt(self._get("variance", X) + self.eps)
        return Z

    def _inverse(self, xp, Z):
        if self.whiten:
            Z = Z * xp.sqrt(self._get("variance", Z) + self.eps)
        return Z @ self._get("components", Z) + self._get("mean", Z)


class ZCA(Transformer):
    """ZCA whitening: ``Xc @ U diag(1 / sqrt(S + eps)) U^T`` with ``(S, U)`` the eigenpairs of
    the training covariance.  Like PCA whitening the output covariance is (close to) the
    identity, but the data stay in the original feature axes (the whitened images still look
    like images).  A larger ``eps`` smooths (low-pass filters) the noisy low-variance directions.
    X (N, D) -> (N, D)."""

    min_samples = 2

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = _check_eps(eps)

    def get_config(self):
        return {"eps": self.eps}

    def _stat_names(self):
        return ("mean", "whitening", "coloring")

    def _fit(self, xp, X):
        mean, S, U = _covariance_eigh(xp, X)
        if self.eps == 0:
            _check_nonsingular(xp, S, "ZCA whitening")
        root = xp.sqrt(S + self.eps)
        return {"mean": mean, "whitening": (U / root) @ U.T, "coloring": (U * root) @ U.T}

    def _transform(self, xp, X):
        return (X - self._get("mean", X)) @ self._get("whitening", X)

    def _inverse(self, xp, Z):
        return Z @ self._get("coloring", Z) + self._get("mean", Z)
