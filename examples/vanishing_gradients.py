"""Vanishing gradients and dead ReLUs, measured (CS231n's claims, in numbers).

1. In a 10-layer sigmoid network (LeCun init, Var(w) = 1/n_in) the first layer's gradient norm
   is orders of magnitude below the last layer's: every sigmoid multiplies the backward signal
   by sigma'(x) <= 1/4.  A He-initialized ReLU network of the same shape keeps them within an
   order of magnitude.
2. A ReLU network trained with a too-high learning rate ends with most of its units dead
   (never active on the training set); a sensible learning rate keeps them alive.

Run ``python examples/vanishing_gradients.py [--plot gradients.png]``.  The plot needs
matplotlib (``pip install 'xpdnn[plot]'``) and is skipped with a note without it.
tests/test_diagnostics.py runs the same functions at a small size and asserts both claims.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

import xpdnn as xd
from xpdnn import _backend as B
from xpdnn.diagnostics import (DeadReLUMonitor, DiagnosticsWarning, GradientFlowMonitor, format_diagnostics,
                               gradient_norms)
from xpdnn.preprocessing import Standardizer


def digits(n: int | None = None, dtype="float64"):
    """Standardized digits X (n, 64) and labels y (n,) (the first n samples; all by default)."""
    X, y = xd.datasets.load_digits(dtype)
    X = Standardizer().fit_transform(X)
    return (X, y) if n is None else (X[:n], y[:n])


def deep_net(activation, init, *, depth=10, width=64, n_in=64, n_out=10, seed=0, dtype="float64"):
    """``depth`` Linear layers of ``width`` units with ``activation`` in between, initialized
    with ``init`` from ``seed``."""
    layers, n = [], n_in
    for _ in range(depth - 1):
        layers += [xd.Linear(n, width, init=init, dtype=dtype), activation()]
        n = width
    layers.append(xd.Linear(n, n_out, init=init, dtype=dtype))
    return xd.Sequential(*layers).initialize(seed)


def gradient_flow(X, y, activation, init, *, depth=10, width=64, seed=0):
    """Per-layer gradient norms {path: norm} of a fresh ``deep_net`` on (X, y) at initialization
    (softmax cross-entropy), and the ratio first layer / last layer."""
    net = deep_net(activation, init, depth=depth, width=width, n_in=X.shape[1],
                   n_out=int(np.max(B.to_numpy(y))) + 1, seed=seed, dtype=B.dtype_name(X.dtype))
    norms = gradient_norms(net, X, y, xd.SoftmaxCrossEntropy())
    values = list(norms.values())
    return norms, values[0] / values[-1]


def dead_after_training(X, y, lr, *, width=64, epochs=2, seed=0, momentum=0.9, batch_size=32):
    """Train a 2-hidden-layer ReLU net with SGD(lr, momentum) on (X, y) with a
    :class:`DeadReLUMonitor` on X and a :class:`GradientFlowMonitor`; returns the trainer's
    history (``dead_fraction/<path>``, ``grad_norm/<path>``, ... per epoch) and the
    DiagnosticsWarnings raised."""
    n_out = int(np.max(B.to_numpy(y))) + 1
    net = xd.Sequential(xd.Linear(X.shape[1], width), xd.ReLU(), xd.Linear(width, width), xd.ReLU(),
                        xd.Linear(width, n_out))
    trainer = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=lr, momentum=momentum),
                         batch_size=batch_size, epochs=epochs, seed=seed, progress=False,
                         callbacks=[GradientFlowMonitor(), DeadReLUMonitor(X)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DiagnosticsWarning)
        trainer.fit(X, y)
    return trainer.history, [w for w in caught if issubclass(w.category, DiagnosticsWarning)]


def _plot(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"(matplotlib is not installed: no plot written to {path}; pip install 'xpdnn[plot]')")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, norms in rows:
        ax.semilogy(range(1, len(norms) + 1), list(norms.values()), marker="o", label=label)
    ax.set_xlabel("Linear layer (1 = first)")
    ax.set_ylabel("gradient norm at initialization")
    ax.set_title("10-layer networks on digits")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", metavar="PNG", help="write the per-layer gradient norms to this image")
    parser.add_argument("--seeds", type=int, default=5, help="networks per configuration (default 5)")
    args = parser.parse_args(argv)

    X, y = digits(1000)
    print("1. gradient norm per Linear layer at initialization, 10 layers of 64 units, digits (1000 samples)\n")
    rows = []
    for label, act, init in (("sigmoid, LeCun init", xd.Sigmoid, "lecun"), ("ReLU, He init", xd.ReLU, "he")):
        ratios = []
        for seed in range(args.seeds):
            norms, ratio = gradient_flow(X, y, act, init, seed=seed)
            ratios.append(ratio)
            if seed == 0:
                rows.append((label, norms))
                print(f"{label:20s} " + " ".join(f"{v:.1e}" for v in norms.values()))
        print(f"{'':20s} first/last layer: {min(ratios):.1e} .. {max(ratios):.1e} over {args.seeds} seeds\n")
    if args.plot:
        _plot(rows, args.plot)

    X, y = digits(dtype="float32")
    print("2. dead ReLU units after 2 epochs of SGD (momentum 0.9), 2 hidden layers of 64 units, digits\n")
    for lr in (0.05, 0.5):
        history, caught = dead_after_training(X, y, lr)
        print(f"learning rate {lr}: accuracy {history['accuracy'][-1]:.3f}")
        print(format_diagnostics(history))
        for w in caught:
            print(f"warning: {w.message}")
        print()


if __name__ == "__main__":
    main()
