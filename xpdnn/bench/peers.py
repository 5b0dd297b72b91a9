"""The contenders: :class:`Peer` and :data:`PEERS`, how data reaches a peer's library and
device, one training-epoch runner per kind (xpdnn, PyTorch, scikit-learn, the bare NumPy
loop) and the W2 / W3 single-operation steps."""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from dataclasses import dataclass

import numpy as np

from .workloads import LR, MOMENTUM


@dataclass(frozen=True)
class Peer:
    """One contender: ``kind`` is 'xpdnn', 'torch' or 'sklearn'; ``lib`` the array library its
    data lives in; ``device`` 'cpu' or 'cuda'; ``env`` environment variables set while it runs
    (``xpdnn-numpy-nojit``: ``XPDNN_NO_JIT=1``, xpdnn-numpy without its compiled kernels)."""

    name: str
    kind: str
    lib: str
    device: str
    env: tuple = ()


PEERS = {p.name: p for p in (
    Peer("xpdnn-numpy", "xpdnn", "numpy", "cpu"),
    Peer("xpdnn-numpy-nojit", "xpdnn", "numpy", "cpu", (("XPDNN_NO_JIT", "1"),)),
    Peer("xpdnn-torch", "xpdnn", "torch", "cpu"),
    Peer("torch", "torch", "torch", "cpu"),
    Peer("sklearn", "sklearn", "numpy", "cpu"),
    Peer("numpy-loop", "numpy-loop", "numpy", "cpu"),
    Peer("xpdnn-array_api_strict", "xpdnn", "array_api_strict", "cpu"),
    Peer("xpdnn-cupy", "xpdnn", "cupy", "cuda"),
    Peer("xpdnn-torch-cuda", "xpdnn", "torch", "cuda"),
    Peer("torch-cuda", "torch", "torch", "cuda"),
)}


@contextlib.contextmanager
def peer_env(peer: Peer):
    """Set the peer's environment variables for the duration (xpdnn reads ``XPDNN_NO_JIT`` on
    every call), then restore them."""
    old = {k: os.environ.get(k) for k, _ in peer.env}
    os.environ.update(dict(peer.env))
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def put(host: np.ndarray, peer: Peer):
    """``host`` copied into the peer's library and device."""
    if peer.lib == "numpy":
        return host
    if peer.lib == "torch":
        import torch

        return torch.from_numpy(np.ascontiguousarray(host).copy()).to(peer.device)
    if peer.lib == "cupy":
        import cupy

        return cupy.asarray(host)
    if peer.lib == "array_api_strict":
        import array_api_strict

        return array_api_strict.asarray(host)
    raise ValueError(f"unknown library {peer.lib!r}")


def synchronizer(lib: str, device: str):
    """A function that waits for queued device work of ``lib`` (a no-op on the CPU)."""
    if device != "cuda":
        return lambda: None
    if lib == "torch":
        import torch

        return torch.cuda.synchronize
    import cupy

    return lambda: cupy.cuda.get_current_stream().synchronize()


def peer_available(peer: Peer) -> tuple[bool, str]:
    import importlib

    needs = {"numpy": [], "torch": ["torch"], "cupy": ["cupy"], "array_api_strict": ["array_api_strict"]}[peer.lib]
    if peer.kind == "sklearn":
        needs = ["sklearn"]
    for mod in needs:
        try:
            importlib.import_module(mod)
        except ImportError:
            return False, f"{mod} is not installed"
    if ("XPDNN_NO_JIT", "1") in peer.env:
        from .. import kernels

        if kernels._jit() is None:
            return False, f"xpdnn-numpy already runs without compiled kernels ({kernels.jit_status()})"
    if peer.device == "cuda":
        if peer.lib == "cupy":
            from ..devices import cuda_available

            ok, why = cuda_available()
            if not ok:
                return False, why
        else:
            import torch

            if not torch.cuda.is_available():
                return False, "PyTorch sees no CUDA device"
    return True, ""


def build_xpdnn_mlp(sizes, dropout: float = 0.0, seed: int = 0):
    """Linear -> ReLU (-> Dropout) per hidden layer, then a Linear output layer, initialized
    from ``seed``."""
    import xpdnn as xd

    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(xd.Linear(n_in, n_out, seed=seed + i))
        if i < len(sizes) - 2:
            layers.append(xd.ReLU())
            if dropout:
                layers.append(xd.Dropout(dropout, seed=seed))
    return xd.Sequential(*layers).initialize(seed)


class XpdnnMLP:
    """xpdnn.Trainer (progress off) training for one epoch per :meth:`epoch` call."""

    def __init__(self, peer: Peer, sizes, dropout: float, batch: int, seed: int = 0):
        import xpdnn as xd

        self.peer, self.batch, self.seed = peer, batch, seed
        self.net = build_xpdnn_mlp(sizes, dropout, seed)
        self.opt = xd.SGD(lr=LR, momentum=MOMENTUM)
        self.loss = xd.SoftmaxCrossEntropy()

    def place(self, X, y):
        X, y = put(X, self.peer), put(y, self.peer)
        self.net.ensure_like(X)
        return X, y

    def epoch(self, X, y) -> float:
        import xpdnn as xd

        trainer = xd.Trainer(self.net, loss=self.loss, optimizer=self.opt, batch_size=self.batch, epochs=1,
                             seed=self.seed, progress=False)
        with peer_env(self.peer):
            return trainer.fit(X, y)["loss"][0]


class TorchMLP:
    """The same network, loss and optimizer in PyTorch, trained by a hand loop that does what
    xpdnn's Trainer does per step (same shuffling, finite-loss check, loss/accuracy sums).
    Starts from the weights of the xpdnn network built with the same seed."""

    def __init__(self, peer: Peer, sizes, dropout: float, batch: int, seed: int = 0):
        import torch

        self.peer, self.batch, self.seed = peer, batch, seed
        ref = build_xpdnn_mlp(sizes, dropout, seed)   # the same layer indices, so the same init
        mods = []
        for i, lin in enumerate(l for l in ref.layers if hasattr(l, "n_out")):
            m = torch.nn.Linear(lin.n_in, lin.n_out)
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(np.asarray(lin.params["W"], dtype=np.float32)))
                m.bias.copy_(torch.from_numpy(np.asarray(lin.params["b"], dtype=np.float32)))
            mods.append(m)
            if i < len(sizes) - 2:
                mods.append(torch.nn.ReLU())
                if dropout:
                    mods.append(torch.nn.Dropout(dropout))
        self.model = torch.nn.Sequential(*mods).to(peer.device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)

    def place(self, X, y):
        return put(X, self.peer), put(y, self.peer)

    def epoch(self, X, y) -> float:
        import torch
        import torch.nn.functional as F

        N = X.shape[0]
        order = torch.from_numpy(np.random.default_rng([self.seed, 0]).permutation(N).astype(np.int64))
        order = order.to(X.device)
        total = torch.zeros((), device=X.device)
        correct = torch.zeros((), dtype=torch.int64, device=X.device)
        self.model.train()
        for start in range(0, N, self.batch):
            idx = order[start:start + self.batch]
            Xb, yb = X.index_select(0, idx), y.index_select(0, idx)
            self.opt.zero_grad(set_to_none=True)
            Z = self.model(Xb)
            loss = F.cross_entropy(Z, yb)
            if not bool(torch.isfinite(loss)):
                raise RuntimeError("torch peer: loss is not finite")
            loss.backward()
            self.opt.step()
            total += loss.detach() * Xb.shape[0]
            correct += (Z.detach().argmax(dim=1) == yb).sum()
        return float(total) / N


class SklearnMLP:
    """scikit-learn's MLPClassifier for one epoch: sgd, momentum 0.9 (not Nesterov), lr 0.01,
    alpha 0, max_iter 1 (its ConvergenceWarning silenced).  Each call is a fresh ``fit``, which
    includes sklearn's own weight initialization.  No dropout."""

    def __init__(self, peer: Peer, sizes, dropout: float, batch: int, seed: int = 0):
        if dropout:
            raise ValueError("scikit-learn's MLPClassifier has no dropout")
        from sklearn.neural_network import MLPClassifier

        self.clf = MLPClassifier(hidden_layer_sizes=tuple(sizes[1:-1]), activation="relu", solver="sgd",
                                 momentum=MOMENTUM, nesterovs_momentum=False, learning_rate_init=LR,
                                 batch_size=batch, alpha=0.0, max_iter=1, shuffle=True, random_state=seed)

    def place(self, X, y):
        return X, y

    def epoch(self, X, y) -> float:
        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.clf.fit(X, y)
        return float(self.clf.loss_)


class NumpyLoopMLP:
    """The xpdnn-numpy epoch with the framework taken away: the same network, initial weights,
    shuffling, Philox dropout masks, loss and SGD update written as one bare NumPy loop over
    the layers, calling the same BLAS paths (:mod:`xpdnn.kernels.cpu`) and keeping only the work
    a step cannot skip.  Not a library a user would pick: the reference for how much of the GEMM
    roofline plain NumPy reaches at all, and so how much of xpdnn's gap to the roofline is its
    own overhead.  It reaches xpdnn's first-epoch loss (checked in ``tests/test_bench_smoke.py``)."""

    def __init__(self, peer: Peer, sizes, dropout: float, batch: int, seed: int = 0):
        ref = build_xpdnn_mlp(sizes, dropout, seed)   # the same layer indices, so the same init
        lins = [lay for lay in ref.layers if hasattr(lay, "n_out")]
        self.W = [np.array(lay.params["W"], dtype=np.float32) for lay in lins]
        self.b = [np.array(lay.params["b"], dtype=np.float32) for lay in lins]
        self.vW = [np.zeros_like(w) for w in self.W]
        self.vb = [np.zeros_like(b) for b in self.b]
        self.rate, self.batch, self.seed = float(dropout), batch, seed

    def place(self, X, y):
        return X, y

    def epoch(self, X, y) -> float:
        from ..kernels import cpu
        from ..random import keep_mask

        W, b, vW, vb, L = self.W, self.b, self.vW, self.vb, len(self.W)
        scale = np.float32(1.0 / (1.0 - self.rate))
        N, counter, total, correct = X.shape[0], 0, 0.0, 0
        order = np.random.default_rng([self.seed, 0]).permutation(N)
        for start in range(0, N, self.batch):
            idx = order[start:start + self.batch]
            h, yb = X.take(idx, axis=0), y.take(idx)
            n, acts, masks = h.shape[0], [], []
            for i in range(L):                       # forward: Linear (+ ReLU (+ dropout))
                acts.append(h)
                h = h @ W[i].T
                h += b[i]
                if i < L - 1:
                    cpu.relu_(h)
                    if self.rate:
                        keep = keep_mask(self.seed, counter, h.shape, self.rate)
                        counter += 1
                        h *= keep
                        h *= scale
                        masks.append(keep)
            rows = np.arange(n)                      # softmax cross-entropy, mean over the batch
            h -= h.max(axis=1, keepdims=True)
            picked = h[rows, yb]
            np.exp(h, out=h)
            sums = h.sum(axis=1)
            loss = float(np.mean(np.log(sums) - picked))
            if not math.isfinite(loss):
                raise RuntimeError("numpy-loop peer: loss is not finite")
            correct += int(np.count_nonzero(h.argmax(axis=1) == yb))   # the accuracy sum every peer keeps
            h /= sums[:, None]
            h[rows, yb] -= 1.0
            h *= np.float32(1.0 / n)
            dY = h
            for i in reversed(range(L)):             # backward + SGD momentum, layer by layer
                dX = dY @ W[i] if i else None
                cpu.gemm_tn_acc_(dY, acts[i], vW[i], MOMENTUM)
                vb[i] *= np.float32(MOMENTUM)
                vb[i] += dY.sum(axis=0)
                cpu.axpy_flat_(-LR, vW[i], W[i])
                cpu.axpy_flat_(-LR, vb[i], b[i])
                if i:
                    if self.rate:
                        dX *= masks[i - 1]
                        dX *= scale
                    dX *= acts[i] > 0
                    dY = dX
            total += loss * n
        return total / N


def mlp_runner(peer: Peer, sizes, dropout: float, batch: int, seed: int = 0):
    """An object with ``place(X_host, y_host) -> (X, y)`` and ``epoch(X, y) -> mean loss``."""
    cls = {"xpdnn": XpdnnMLP, "torch": TorchMLP, "sklearn": SklearnMLP, "numpy-loop": NumpyLoopMLP}[peer.kind]
    return cls(peer, sizes, dropout, batch, seed)


def softmax_ce_step(peer: Peer, Z, y):
    """A function computing softmax cross-entropy and its gradient w.r.t. the logits Z (N, C)."""
    if peer.kind == "xpdnn":
        import xpdnn as xd

        loss_fn = xd.SoftmaxCrossEntropy()

        def step():
            with peer_env(peer):
                return loss_fn(Z, y)
        return step
    import torch
    import torch.nn.functional as F

    Zr = Z.detach().requires_grad_(True)

    def step():
        loss = F.cross_entropy(Zr, y)
        return loss, torch.autograd.grad(loss, Zr)[0]
    return step


def dropout_step(peer: Peer, X, dY, rate: float = 0.2, seed: int = 0):
    """A function running dropout forward and backward on X (any shape) with upstream dY."""
    if peer.kind == "xpdnn":
        from ..layers.dropout import Dropout
        from ..random import Stream

        layer, stream = Dropout(rate), Stream(seed)

        def step():
            with peer_env(peer):
                Y, backprop = layer.forward(X, train=True, rng=stream)
                return Y, backprop(dY)
        return step
    import torch
    import torch.nn.functional as F

    Xr = X.detach().requires_grad_(True)

    def step():
        Y = F.dropout(Xr, rate, training=True)
        return Y, torch.autograd.grad(Y, Xr, dY)[0]
    return step
