"""scikit-learn estimators: :class:`XPDNNClassifier` and :class:`XPDNNRegressor`.

An MLP (``hidden`` sizes, ``activation``, ``dropout``) trained by a :class:`~xpdnn.Trainer`
behind scikit-learn's estimator API, so it goes into ``Pipeline``, ``GridSearchCV``,
``cross_val_score`` and ``clone``.  The constructor stores its parameters unchanged; ``fit``
validates them.  X is anything scikit-learn accepts (NumPy arrays, lists, pandas DataFrames,
whose column names become ``feature_names_in_``); it is converted to NumPy on the host and
``device`` (e.g. ``"cuda"``) moves the training data there.

This module imports scikit-learn (``pip install "xpdnn[sklearn]"``); ``import xpdnn`` does not.
"""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, column_or_1d, validate_data

from . import _backend as B
from .layers import Dropout, Linear, Sequential
from .losses import MAE, MSE, BinaryCrossEntropy, Huber, SoftmaxCrossEntropy
from .losses.base import Loss
from .trainer import EarlyStopping, Trainer

__all__ = ["XPDNNClassifier", "XPDNNRegressor"]

_ACTIVATIONS = {"relu": "ReLU", "tanh": "Tanh", "sigmoid": "Sigmoid", "logistic": "Sigmoid",
                "identity": "Identity", "leakyrelu": "LeakyReLU", "elu": "ELU", "gelu": "GELU",
                "silu": "SiLU", "softplus": "Softplus"}
_OPTIMIZERS = ("sgd", "nesterov", "adam", "adamw", "rmsprop", "adagrad")
_REGRESSION_LOSSES = {"mse": MSE, "mae": MAE, "huber": Huber}


class WeightedLoss(Loss):
    """Per-sample weights for a loss that has ``reduction="none"``.

    The targets it takes are the base loss's targets with one more column, the sample's weight
    (see :func:`pack_weights`), so the weights travel through the trainer's shuffling and
    batching with their rows.  The loss of a batch of N rows is ``sum_i w_i l_i / N``, with
    ``l_i`` the base loss of row i averaged over its outputs: with every weight 1 it is the base
    loss's ``"mean"`` reduction.  Weights are rescaled to mean 1 over the training set by
    :func:`pack_weights`, so the learning rate means the same as without weights.

    ``head`` is None on purpose: the trainer's accuracy would read the packed targets; the
    network's own head is set when it is built.
    """

    head = None

    def __init__(self, base: Loss):
        if getattr(base, "reduction", None) != "none":
            raise ValueError(f"WeightedLoss needs a loss built with reduction='none', got {base!r}")
        self.base = base

    @staticmethod
    def _split(T):
        t = T[:, 0] if T.shape[1] == 2 else T[:, :-1]
        return t, T[:, -1]

    def check_targets(self, T, n_outputs):
        t, _ = self._split(T)
        self.base.check_targets(t, n_outputs)
        return T

    def __call__(self, Z, T, *, check: bool = True):
        xp = B.namespace(Z)
        t, w = self._split(T)
        if isinstance(self.base, SoftmaxCrossEntropy):
            t = xp.astype(t, xp.int64)
        L, G = self.base(Z, t, check=check)
        w = xp.astype(w, Z.dtype)
        N = Z.shape[0]
        if L.ndim == 2:                          # elementwise losses: average each row's outputs
            k = L.shape[1]
            return xp.sum(xp.mean(L, axis=1) * w) / N, G * (w[:, None] / (N * k))
        return xp.sum(L * w) / N, G * (w[:, None] / N)


def pack_weights(y, w):
    """(N, k + 1) float64 targets: y's columns then the weights ``w`` rescaled to mean 1."""
    y = np.asarray(y, dtype=np.float64)
    y = y[:, None] if y.ndim == 1 else y
    w = np.asarray(w, dtype=np.float64)
    return np.concatenate([y, (w / w.mean())[:, None]], axis=1)


def _check_int(name, v, lo):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def _check_float(name, v, lo, hi, hi_open=False, lo_open=False):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not np.isfinite(v) \
            or v < lo or v > hi or (hi_open and v == hi) or (lo_open and v == lo):
        raise ValueError(f"{name} must be a number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}, "
                         f"got {v!r}")
    return float(v)


class _XPDNNEstimator(BaseEstimator):
    """What the classifier and the regressor share: parameters, the net, the trainer, the fit."""

    def __init__(self, hidden=(100,), activation="relu", dropout=0.0, optimizer="adam", lr=1e-3,
                 weight_decay=0.0, batch_size=200, epochs=200, seed=0, device=None, dtype="float32",
                 early_stopping=False, validation_fraction=0.1, patience=10, tol=1e-4, verbose=0):
        self.hidden = hidden
        self.activation = activation
        self.dropout = dropout
        self.optimizer = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.epochs = epochs
        self.seed = seed
        self.device = device
        self.dtype = dtype
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.tol = tol
        self.verbose = verbose

    # -- parameters ---------------------------------------------------------------------
    def _validate_params(self):
        hidden = self.hidden
        if isinstance(hidden, numbers.Integral) and not isinstance(hidden, bool):
            hidden = (hidden,)
        try:
            hidden = tuple(hidden)
        except TypeError:
            raise ValueError(f"hidden must be a sequence of layer sizes, got {self.hidden!r}") from None
        hidden = tuple(_check_int("hidden sizes", h, 1) for h in hidden)
        if not isinstance(self.activation, str) or self.activation.lower() not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
        if not isinstance(self.optimizer, str) or self.optimizer.lower() not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {_OPTIMIZERS}, got {self.optimizer!r}")
        if self.dtype not in B.FLOAT_DTYPES:
            raise ValueError(f"dtype must be one of {B.FLOAT_DTYPES}, got {self.dtype!r}")
        if self.seed is not None:
            _check_int("seed", self.seed, 0)
        _check_float("dropout", self.dropout, 0.0, 1.0, hi_open=True)
        _check_float("lr", self.lr, 0.0, np.inf, lo_open=True, hi_open=True)
        _check_float("weight_decay", self.weight_decay, 0.0, np.inf, hi_open=True)
        _check_float("validation_fraction", self.validation_fraction, 0.0, 1.0, lo_open=True, hi_open=True)
        _check_float("tol", self.tol, 0.0, np.inf, hi_open=True)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("epochs", self.epochs, 1)
        _check_int("patience", self.patience, 1)
        _check_int("verbose", self.verbose, 0)
        return hidden

    def _seed(self):
        return np.random.SeedSequence().entropy % 2 ** 32 if self.seed is None else int(self.seed)

    def _build(self, n_in, n_out, head):
        import xpdnn as xd

        hidden = self._validate_params()
        act = getattr(xd, _ACTIVATIONS[self.activation.lower()])
        init = "glorot" if self.activation.lower() in ("tanh", "sigmoid", "logistic", "identity") else "he"
        layers, size = [], n_in
        for h in hidden:
            layers += [Linear(size, h, init=init), act()]
            if self.dropout:
                layers.append(Dropout(float(self.dropout)))
            size = h
        layers.append(Linear(size, n_out, init="glorot"))
        net = Sequential(*layers, head=head)
        if self.dtype != net.dtype:
            net = net.astype(self.dtype)
        return net

    def _make_optimizer(self):
        import xpdnn as xd

        name, lr, wd = self.optimizer.lower(), float(self.lr), float(self.weight_decay)
        if name in ("sgd", "nesterov"):
            return xd.SGD(lr=lr, momentum=0.9, nesterov=name == "nesterov", weight_decay=wd)
        cls = {"adam": xd.Adam, "adamw": xd.AdamW, "rmsprop": xd.RMSProp, "adagrad": xd.Adagrad}[name]
        return cls(lr=lr, weight_decay=wd) if wd else cls(lr=lr)

    # -- fitting ------------------------------------------------------------------------
    def _check_X(self, X, reset):
        return self._validate(X, reset=reset)

    def _validate(self, X, y="no_validation", **kwargs):
        """scikit-learn's ``validate_data``; a DataFrame column that is not numeric is named."""
        try:
            return validate_data(self, X, y, dtype=[np.float64, np.float32], **kwargs)
        except ValueError:
            if hasattr(X, "columns"):
                B.as_array(X, "X")            # raises the error that names the column
            raise

    def _train(self, X, T, sample_weight, *, loss, n_out, head, first, epochs, partial):
        """Train the net on targets T (what the ``loss`` class takes), from scratch when
        ``first``, for ``epochs`` epochs (``partial``: a partial_fit, without early stopping)."""
        if sample_weight is not None and np.ptp(sample_weight) > 0:
            T, loss = pack_weights(T, sample_weight), WeightedLoss(loss(reduction="none"))
        else:
            loss = loss()
        val, callbacks = None, []
        if first and self.early_stopping and not partial:
            n_val = int(np.ceil(float(self.validation_fraction) * X.shape[0]))
            if n_val >= X.shape[0]:
                raise ValueError(f"validation_fraction={self.validation_fraction} leaves no training sample "
                                 f"out of {X.shape[0]}")
            seed = self._seed()
            order = np.random.default_rng([seed, 1]).permutation(X.shape[0])
            val = (X[order[:n_val]], T[order[:n_val]])
            X, T = X[order[n_val:]], T[order[n_val:]]
            callbacks.append(EarlyStopping("val_loss", patience=int(self.patience), min_delta=float(self.tol)))
        if first:
            seed = self._seed() if val is None else seed
            self.net_ = self._build(X.shape[1], n_out, head)
            self.trainer_ = Trainer(self.net_, loss=loss, optimizer=self._make_optimizer(),
                                    batch_size=min(int(self.batch_size), X.shape[0]), epochs=0, seed=seed,
                                    progress=bool(self.verbose), device=self.device)
            self.loss_curve_, self.validation_loss_curve_, self.best_epoch_ = [], [], None
        else:
            self.trainer_.loss = loss
        t = self.trainer_
        t.callbacks, t.epochs = callbacks, t.epoch + epochs
        t.batch_size = min(int(self.batch_size), X.shape[0])
        try:
            history = t.fit(X, T, validation=val)
        finally:
            t._step = t.guard = None             # per-fit machinery, rebuilt by the next fit (and unpicklable)
            t.callbacks = []
        self.loss_curve_ = list(history["loss"])
        if val is not None:
            self.validation_loss_curve_ = list(history["val_loss"])
            self.best_epoch_ = callbacks[0].best_epoch
        self.n_iter_ = t.epoch
        return self

    def _out(self, A):
        return np.asarray(B.to_numpy(A), dtype=np.float64)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.non_deterministic = self.seed is None
        return tags


class XPDNNClassifier(ClassifierMixin, _XPDNNEstimator):
    """An MLP classifier.  Labels may be any hashable values (strings, numbers, ...): ``classes_``
    holds them sorted (or in order of appearance when they do not sort) and ``predict`` returns
    them.  Targets may be binary (one sigmoid output trained with binary cross-entropy;
    ``predict_proba`` gives (N, 2) ``[P(classes_[0]), P(classes_[1])]``), multiclass (softmax
    outputs with cross-entropy; (N, C)) or multilabel (an (N, K) 0/1 indicator matrix: K sigmoid
    outputs, ``predict`` gives (N, K) 0/1 and ``predict_proba`` (N, K) per-label probabilities).

    Parameters: ``hidden`` (hidden layer sizes), ``activation`` (relu, tanh, sigmoid/logistic,
    identity, leakyrelu, elu, gelu, silu, softplus), ``dropout`` (rate after each hidden layer),
    ``optimizer`` (sgd and nesterov with momentum 0.9, adam, adamw, rmsprop, adagrad), ``lr``,
    ``weight_decay``, ``batch_size`` (capped at N), ``epochs``, ``seed`` (None: a fresh one per
    fit), ``device`` (the Trainer's), ``dtype`` (of the weights), ``early_stopping`` with
    ``validation_fraction`` (a random, seeded share of the data held out), ``patience`` and
    ``tol`` (the least decrease of the validation loss that counts; the best epoch's weights
    are kept), ``verbose`` (the trainer's per-epoch lines).

    ``fit(X, y, sample_weight=None)`` weights each sample's loss; ``partial_fit(X, y,
    classes=None, sample_weight=None)`` trains one more epoch (``classes`` needed on the first
    call).  Fitted attributes: ``classes_``, ``n_features_in_``, ``feature_names_in_`` (from a
    DataFrame), ``net_`` (the :class:`~xpdnn.Sequential`), ``trainer_``, ``n_iter_`` (epochs
    trained), ``loss_curve_``, ``validation_loss_curve_`` and ``best_epoch_`` (early stopping).
    """

    def fit(self, X, y, sample_weight=None):
        """Train a new network on X (N, D) and labels y (N,) or a multilabel indicator (N, K)."""
        for attr in ("classes_", "net_", "trainer_"):
            self.__dict__.pop(attr, None)
        return self._fit(X, y, sample_weight, classes=None, epochs=None)

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch on (X, y); the first call builds the network and needs ``classes`` (all the
        labels there will be), later calls continue it (the optimizer state is kept)."""
        if not hasattr(self, "net_") and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit")
        return self._fit(X, y, sample_weight, classes=classes, epochs=1)

    def _fit(self, X, y, sample_weight, classes, epochs):
        first = not hasattr(self, "net_")
        self._validate_params()
        if first:
            X, y = self._validate(X, y, multi_output=True)
        else:
            X = self._check_X(X, reset=False)
            y = np.asarray(y)
        y = self._check_y(y)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
            if not np.all(sample_weight >= 0) or not np.sum(sample_weight) > 0:
                raise ValueError("sample_weight must be >= 0 with a positive sum")
        if first:
            self._set_classes(y, classes)
        T = self._encode(y)
        head, n_out, loss = self._head()
        return self._train(X, T, sample_weight, loss=loss, n_out=n_out, head=head, first=first,
                           epochs=int(self.epochs) if epochs is None else epochs, partial=epochs is not None)

    def _check_y(self, y):
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if y.ndim == 1 and y.dtype == object and type_of_target(y) == "unknown":
            for v in y.tolist():           # labels of any hashable type (scikit-learn takes str and numbers)
                hash(v)
            return y
        check_classification_targets(y)
        return y

    def _set_classes(self, y, classes):
        kind = type_of_target(y)
        if kind == "multilabel-indicator":
            self.multilabel_ = True
            self.classes_ = np.arange(y.shape[1])
            return
        if y.ndim != 1:
            raise ValueError(f"y must be 1-D labels or a multilabel indicator matrix, got {kind} of shape {y.shape}")
        self.multilabel_ = False
        self.classes_ = _unique(y if classes is None else np.asarray(classes))
        if classes is None and len(self.classes_) < 2:
            raise ValueError(f"the classifier needs samples of at least 2 classes, got 1 class "
                             f"({self.classes_[0]!r})")

    def _encode(self, y):
        if self.multilabel_:
            if y.ndim != 2 or y.shape[1] != len(self.classes_):
                raise ValueError(f"y must be an indicator matrix with {len(self.classes_)} columns, "
                                 f"got shape {y.shape}")
            return np.asarray(y, dtype=np.float64)
        index = {c: i for i, c in enumerate(self.classes_.tolist())}
        try:
            codes = np.fromiter((index[c] for c in y.tolist()), dtype=np.int64, count=y.shape[0])
        except KeyError as exc:
            raise ValueError(f"y contains label {exc.args[0]!r}, which is not in classes_ "
                             f"{self.classes_.tolist()}") from None
        if len(self.classes_) == 2:
            return codes.astype(np.float64)
        return codes

    def _head(self):
        """(head, outputs, loss class) for these targets."""
        if self.multilabel_:
            return "sigmoid", len(self.classes_), BinaryCrossEntropy
        if len(self.classes_) <= 2:
            return "sigmoid", 1, BinaryCrossEntropy
        return "softmax", len(self.classes_), SoftmaxCrossEntropy

    def predict_proba(self, X):
        """(N, C) class probabilities (columns in ``classes_`` order), or (N, K) per label."""
        check_is_fitted(self)
        X = self._check_X(X, reset=False)
        return self._out(self.net_.predict_proba(X))

    def score(self, X, y, sample_weight=None):
        """Mean accuracy (subset accuracy for multilabel targets), as ``ClassifierMixin``'s, also
        for labels that do not sort (which scikit-learn's ``accuracy_score`` refuses)."""
        try:
            return super().score(X, y, sample_weight=sample_weight)
        except TypeError:
            hit = self.predict(X) == column_or_1d(np.asarray(y, dtype=object))
            return float(np.average(hit, weights=sample_weight))

    def predict(self, X):
        """(N,) labels from ``classes_``, or an (N, K) 0/1 matrix for multilabel targets."""
        P = self.predict_proba(X)
        if self.multilabel_:
            return (P > 0.5).astype(np.int64)
        return self.classes_[np.argmax(P, axis=1)]


class XPDNNRegressor(RegressorMixin, _XPDNNEstimator):
    """An MLP regressor: linear outputs trained with ``loss`` (``"mse"``, ``"mae"`` or
    ``"huber"``) on y (N,) or (N, K); ``predict`` returns (N,) or (N, K) float64.  Every other
    parameter and attribute is :class:`XPDNNClassifier`'s (no classes); ``partial_fit(X, y,
    sample_weight=None)`` trains one more epoch."""

    def __init__(self, hidden=(100,), activation="relu", dropout=0.0, optimizer="adam", lr=1e-3,
                 weight_decay=0.0, batch_size=200, epochs=200, seed=0, device=None, dtype="float32",
                 early_stopping=False, validation_fraction=0.1, patience=10, tol=1e-4, verbose=0,
                 loss="mse"):
        super().__init__(hidden=hidden, activation=activation, dropout=dropout, optimizer=optimizer, lr=lr,
                         weight_decay=weight_decay, batch_size=batch_size, epochs=epochs, seed=seed,
                         device=device, dtype=dtype, early_stopping=early_stopping,
                         validation_fraction=validation_fraction, patience=patience, tol=tol,
                         verbose=verbose)
        self.loss = loss

    def fit(self, X, y, sample_weight=None):
        """Train a new network on X (N, D) and targets y (N,) or (N, K)."""
        for attr in ("net_", "trainer_"):
            self.__dict__.pop(attr, None)
        return self._fit(X, y, sample_weight, epochs=None)

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch on (X, y), continuing the network of earlier calls (or a new one)."""
        return self._fit(X, y, sample_weight, epochs=1)

    def _fit(self, X, y, sample_weight, epochs):
        first = not hasattr(self, "net_")
        self._validate_params()
        if not isinstance(self.loss, str) or self.loss.lower() not in _REGRESSION_LOSSES:
            raise ValueError(f"loss must be one of {sorted(_REGRESSION_LOSSES)}, got {self.loss!r}")
        X, y = self._validate(X, y, reset=first, multi_output=True, y_numeric=True)
        y = np.asarray(y, dtype=np.float64)
        if first:
            self.n_outputs_ = 1 if y.ndim == 1 else y.shape[1]
            self._y_1d = y.ndim == 1
        elif (1 if y.ndim == 1 else y.shape[1]) != self.n_outputs_:
            raise ValueError(f"y has {1 if y.ndim == 1 else y.shape[1]} outputs but the model was fitted "
                             f"with {self.n_outputs_}")
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
            if not np.all(sample_weight >= 0) or not np.sum(sample_weight) > 0:
                raise ValueError("sample_weight must be >= 0 with a positive sum")
        T = y[:, None] if y.ndim == 1 else y
        loss = _REGRESSION_LOSSES[self.loss.lower()]
        return self._train(X, T, sample_weight, loss=loss, n_out=self.n_outputs_, head="identity",
                           first=first, epochs=int(self.epochs) if epochs is None else epochs, partial=epochs is not None)

    def predict(self, X):
        """(N,) predictions for a single target, else (N, K), as float64."""
        check_is_fitted(self)
        X = self._check_X(X, reset=False)
        Y = self._out(self.net_.predict(X))
        return Y[:, 0] if self._y_1d else Y


def _unique(y):
    """Sorted distinct labels, or in order of first appearance when they do not sort."""
    try:
        return np.unique(y)
    except TypeError:
        seen = dict.fromkeys(y.tolist())
        out = np.empty(len(seen), dtype=object)
        out[:] = list(seen)
        return out
