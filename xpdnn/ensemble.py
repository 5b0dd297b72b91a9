"""Ensembles: bagging, Monte-Carlo dropout prediction and the annealed dropout schedule.

* :class:`Bagging` trains several networks on bootstrap resamples of the training set and
  combines them by averaging probabilities or by majority vote.
* :func:`mc_predict` averages the predictions of many random dropout sub-networks (the
  "numerical" marginalization of the noise; evaluation-mode dropout is the "analytic" one).
* :class:`AnnealedDropout` lowers the dropout rate as training goes on.
"""

from __future__ import annotations

import numpy as np

from . import _backend as B
from . import heads
from .layers.activations import Softmax
from .layers.base import Layer
from .layers.dropconnect import DropConnect
from .layers.dropout import Dropout
from .layers.sequential import Sequential
from .losses.cross_entropy import SoftmaxCrossEntropy
from .optim.base import Optimizer
from .random import Stream
from .trainer import Callback, Trainer

MC_LAYERS = (Dropout, DropConnect)


def _has_stochastic(layer: Layer, kinds) -> bool:
    return any(isinstance(lay, kinds) for _, lay in layer.named_layers())


def stochastic_forward(layer: Layer, X, rng, kinds=MC_LAYERS):
    """Evaluation-mode output of ``layer`` for ``X`` except that the layers of type ``kinds``
    (Dropout and DropConnect by default) run in training mode with ``rng``.  BatchNorm and
    every other layer keep their evaluation behaviour (and running statistics).  Walks
    :class:`Sequential` containers; another container that holds such a layer is an error."""
    if isinstance(layer, kinds):
        return layer.forward(X, train=True, rng=rng)[0]
    if isinstance(layer, Sequential):
        for sub in layer.layers:
            X = stochastic_forward(sub, X, rng, kinds)
        return X
    if _has_stochastic(layer, kinds):
        raise TypeError(
            f"mc_predict cannot reach the dropout layers inside a {type(layer).__name__}: only "
            "Sequential containers are walked")
    return layer.forward(X, train=False)[0]


def mc_predict(net: Layer, X, n_samples: int = 30, seed: int = 0, *, batch_size: int = 4096, kinds=MC_LAYERS):
    """Monte-Carlo dropout prediction: the mean and spread of the class probabilities over
    ``n_samples`` random forward passes, in which only the layers of type ``kinds`` (Dropout,
    DropConnect) are stochastic; all other layers (BatchNorm!) run in evaluation mode.

    X: (N, n_in) -> (mean, std), both (N, C) in X's library: the average of the passes'
    probabilities as the net's head reads them (:meth:`Sequential.predict_proba`: softmax
    classes, or sigmoid outputs for a binary / multilabel net; a final :class:`Softmax` layer is
    not applied twice; a regression net is refused) and their
    standard deviation over the passes (``correction=0``).  The masks come from
    ``Stream(seed)``, so a call is reproducible.  A network without such layers gives one
    deterministic pass and a spread of exactly 0.
    """
    n_samples = int(n_samples)
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if hasattr(net, "prepare"):
        X = net.prepare(X)
    else:
        X = B.as_array(X)
        B.check_floating(X)
        net.ensure_like(X)
    xp = B.namespace(X)
    last = net.layers[-1] if isinstance(net, Sequential) and net.layers else net
    head = net._read_head() if isinstance(net, Sequential) else "softmax"
    heads.check_probabilities(head)
    rng = Stream(seed)
    stochastic = _has_stochastic(net, kinds)
    K = n_samples if stochastic else 1
    means, stds = [], []
    N = X.shape[0]
    for start in range(0, N, int(batch_size)):
        Xb = X[start:min(start + int(batch_size), N), ...]
        samples = []
        for _ in range(K):
            Y = stochastic_forward(net, Xb, rng, kinds)
            samples.append(heads.probabilities(head, Y, probabilities_already=isinstance(last, Softmax)))
        P = xp.stack(samples, axis=0)
        means.append(xp.mean(P, axis=0))
        stds.append(xp.std(P, axis=0) if stochastic else xp.zeros_like(samples[0]))
    if not means:
        raise ValueError("X has no samples")
    return xp.concat(means, axis=0), xp.concat(stds, axis=0)


class AnnealedDropout(Callback):
    """Annealed dropout (Rennie et al., 2014): the dropout rate decreases linearly with the epoch.

    In epoch ``e`` (0-based) every layer of type ``kinds`` (every :class:`Dropout` by default)
    in ``trainer.net`` gets ``rate = start + (end - start) * min(e / epochs, 1)``: ``start`` in
    the first epoch, ``end`` from epoch ``epochs`` on.  ``start=None`` anneals each layer from
    the rate it had when training began.
    """

    reads_gradients = False

    def __init__(self, start: float | None = None, end: float = 0.0, epochs: int = 10, *, kinds=(Dropout,)):
        for name, r in (("start", start), ("end", end)):
            if r is not None and not 0.0 <= float(r) < 1.0:
                raise ValueError(f"AnnealedDropout {name} rate must be in [0, 1), got {r}")
        if int(epochs) < 1:
            raise ValueError(f"AnnealedDropout needs epochs >= 1, got {epochs}")
        self.start = None if start is None else float(start)
        self.end, self.epochs, self.kinds = float(end), int(epochs), kinds
        self._initial: dict[int, float] | None = None

    def rate_at(self, epoch: int, start: float | None = None) -> float:
        """The rate for ``epoch`` (0-based) when annealing from ``start`` (default ``self.start``)."""
        start = self.start if start is None else start
        if start is None:
            raise ValueError("rate_at needs a start rate (AnnealedDropout(start=None) takes each layer's own)")
        frac = min(max(int(epoch), 0) / self.epochs, 1.0)
        return start + (self.end - start) * frac

    def _layers(self, net):
        return [lay for _, lay in net.named_layers() if isinstance(lay, self.kinds)]

    def on_train_begin(self, trainer):
        if self._initial is None:
            self._initial = {id(lay): lay.rate for lay in self._layers(trainer.net)}
        elif isinstance(self._initial, list):        # restored from a checkpoint, in layer order
            layers = self._layers(trainer.net)
            if len(layers) != len(self._initial):
                raise ValueError(f"AnnealedDropout: the checkpoint has starting rates for {len(self._initial)} "
                                 f"layers, the net has {len(layers)}")
            self._initial = {id(lay): r for lay, r in zip(layers, self._initial)}

    def state_dict(self):
        # the rates training started from; after a resume the layers hold annealed rates
        initial = self._initial
        if isinstance(initial, dict):
            initial = list(initial.values())
        return {"initial": initial}, {}

    def load_state_dict(self, state, arrays):
        self._initial = None if state.get("initial") is None else [float(r) for r in state["initial"]]

    def on_epoch_begin(self, trainer, epoch):
        for lay in self._layers(trainer.net):
            start = self.start if self.start is not None else self._initial.get(id(lay), lay.rate)
            lay.rate = self.rate_at(epoch, start)


def _clone_optimizer(optimizer):
    if isinstance(optimizer, Optimizer):
        return type(optimizer)(**optimizer.get_config())
    if callable(optimizer):
        opt = optimizer()
        if not isinstance(opt, Optimizer):
            raise TypeError(f"the optimizer factory returned a {type(opt).__name__}, not an Optimizer")
        return opt
    raise TypeError(f"optimizer must be an Optimizer (used as a template) or a factory, got {type(optimizer).__name__}")


def member_seed(seed: int, member: int) -> int:
    """The training seed of member ``member``: a 32-bit word of NumPy's ``SeedSequence([seed, member])``."""
    return int(np.random.SeedSequence([int(seed), int(member)]).generate_state(1)[0])


class Bagging:
    """Bootstrap aggregating of networks.

    ``make_net()`` returns a new, untrained network (a :class:`Sequential`); member ``m`` is
    initialized and trained with the seed ``member_seed(seed, m)`` on a
    bootstrap resample of the training set: ``sample_size`` (default N) row indices drawn with
    replacement by ``np.random.default_rng([seed, m]).integers(0, N, size)``, so every member is
    reproducible from ``seed`` alone.  Training uses :class:`xpdnn.Trainer` with ``loss``
    (softmax cross-entropy by default), a fresh copy of ``optimizer`` per member (an Optimizer
    used as a template, or a zero-argument factory) and ``trainer_kwargs`` (``batch_size``,
    ``epochs``, ``progress``, ``callbacks``, ...).

    ``combine="average"`` predicts the class of largest mean probability; ``"vote"`` the class
    most members predict (ties go to the smallest label).
    """

    def __init__(self, make_net, n_members: int = 5, *, loss=None, optimizer=None, seed: int = 0,
                 combine: str = "average", sample_size: int | None = None, **trainer_kwargs):
        if not callable(make_net):
            raise TypeError("make_net must be a callable returning a new network")
        if int(n_members) < 1:
            raise ValueError(f"n_members must be >= 1, got {n_members}")
        if combine not in ("average", "vote"):
            raise ValueError(f"combine must be 'average' or 'vote', got {combine!r}")
        if sample_size is not None and int(sample_size) < 1:
            raise ValueError(f"sample_size must be >= 1, got {sample_size}")
        self.make_net, self.n_members, self.seed = make_net, int(n_members), int(seed)
        self.loss = loss if loss is not None else SoftmaxCrossEntropy()
        if optimizer is None:
            from .optim.sgd import SGD
            optimizer = SGD(lr=0.1, momentum=0.9)
        _clone_optimizer(optimizer)   # fail early on a bad optimizer argument
        self.optimizer, self.combine = optimizer, combine
        self.sample_size = None if sample_size is None else int(sample_size)
        self.trainer_kwargs = trainer_kwargs
        self.members: list = []
        self.indices: list[np.ndarray] = []      # bootstrap row indices of each member
        self.histories: list[dict] = []

    def bootstrap_indices(self, member: int, N: int) -> np.ndarray:
        """Row indices (int64, length ``sample_size`` or N) of member ``member``'s resample."""
        size = self.sample_size or N
        return np.random.default_rng([self.seed, int(member)]).integers(0, N, size=size, dtype=np.int64)

    def fit(self, X, y, validation=None):
        """Train the members on X: (N, n_in), y: (N,); returns the list of their histories."""
        X, y = B.as_array(X, "X"), B.as_array(y, "y")
        B.namespace(X, y)
        if X.ndim != 2 or X.shape[0] == 0:
            raise ValueError(f"X must be a non-empty 2-D array (samples, features), got shape {tuple(X.shape)}")
        if y.shape[0] != X.shape[0]:
            raise ValueError(f"X has {X.shape[0]} samples but y has {y.shape[0]}")
        xpX, xpy = B.namespace(X), B.namespace(y)
        N = X.shape[0]
        self.members, self.indices, self.histories = [], [], []
        for m in range(self.n_members):
            idx = self.bootstrap_indices(m, N)
            Xm = xpX.take(X, B.from_numpy(idx, like=X), axis=0)
            ym = xpy.take(y, B.from_numpy(idx, like=y), axis=0)
            net = self.make_net()
            if not isinstance(net, Layer) or not hasattr(net, "predict_proba"):
                raise TypeError(f"make_net returned a {type(net).__name__}, not a network such as a Sequential")
            if any(net is other for other in self.members):
                raise ValueError("make_net returned a network that is already a member; it must build a new one")
            s = member_seed(self.seed, m)
            if hasattr(net, "initialize"):
                net.initialize(s)
            trainer = Trainer(net, loss=self.loss, optimizer=_clone_optimizer(self.optimizer), seed=s,
                              **self.trainer_kwargs)
            self.histories.append(trainer.fit(Xm, ym, validation=validation))
            self.members.append(net)
            self.indices.append(idx)
        return self.histories

    def _check_fitted(self):
        if not self.members:
            raise ValueError("the ensemble is not trained yet; call fit() first")

    def member_proba(self, X):
        """Each member's class probabilities, stacked: (n_members, N, C)."""
        self._check_fitted()
        P = [net.predict_proba(X) for net in self.members]
        return B.namespace(P[0]).stack(P, axis=0)

    def votes(self, X):
        """Votes per class: (N, C) int64, how many members predict each class for each row."""
        return self._votes_of(self.member_proba(X))

    @staticmethod
    def _votes_of(P):
        xp = B.namespace(P)
        labels = xp.argmax(P, axis=2)                                            # (M, N)
        classes = xp.arange(P.shape[2], device=B.device(P))
        return xp.sum(xp.astype(labels[:, :, None] == classes, xp.int64), axis=0)

    def predict_proba(self, X, combine: str | None = None):
        """(N, C): the members' mean probabilities (``"average"``) or vote shares (``"vote"``)."""
        combine = self._combine(combine)
        P = self.member_proba(X)
        xp = B.namespace(P)
        if combine == "average":
            return xp.mean(P, axis=0)
        return xp.astype(self._votes_of(P), P.dtype) / P.shape[0]

    def predict(self, X, combine: str | None = None):
        """(N,) int64 labels by ``combine`` (default: the ensemble's ``combine``); for members
        with a multilabel sigmoid head, (N, K) 0/1 labels: the mean probability (``"average"``)
        or the share of members voting 1 (``"vote"``) above one half."""
        combine = self._combine(combine)
        P = self.member_proba(X)
        xp = B.namespace(P)
        if self._multilabel():
            S = xp.mean(xp.astype(P > 0.5, P.dtype), axis=0) if combine == "vote" else xp.mean(P, axis=0)
            return xp.astype(S > 0.5, xp.int64)
        S = self._votes_of(P) if combine == "vote" else xp.mean(P, axis=0)
        return xp.astype(xp.argmax(S, axis=1), xp.int64)

    def _multilabel(self) -> bool:
        """Whether the members read their K > 1 outputs as independent labels (sigmoid head)."""
        net = self.members[0]
        return getattr(net, "head", None) == "sigmoid" and net.output_size(net.n_in) != 1

    def _combine(self, combine):
        combine = self.combine if combine is None else combine
        if combine not in ("average", "vote"):
            raise ValueError(f"combine must be 'average' or 'vote', got {combine!r}")
        return combine
