"""Command line: ``xpdnn train`` and ``xpdnn info``."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

ACTIVATIONS = ("relu", "tanh", "sigmoid")


def _activation(name):
    import xpdnn as xd

    table = {"relu": xd.ReLU, "tanh": xd.Tanh, "sigmoid": xd.Sigmoid}
    for extra in ("LeakyReLU", "ELU", "GELU", "SiLU", "Softplus"):
        if hasattr(xd, extra):
            table[extra.lower()] = getattr(xd, extra)
    try:
        return table[name]
    except KeyError:
        raise SystemExit(f"xpdnn: unknown activation {name!r}; choose from {sorted(table)}") from None


def _optimizer(name, lr, momentum, weight_decay):
    import xpdnn as xd

    if name == "sgd":
        return xd.SGD(lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "nesterov":
        return xd.SGD(lr=lr, momentum=momentum or 0.9, weight_decay=weight_decay, nesterov=True)
    cls = getattr(xd, {"adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSProp", "adagrad": "Adagrad"}.get(name, ""), None)
    if cls is None:
        raise SystemExit(f"xpdnn: unknown or unavailable optimizer {name!r}")
    return cls(lr=lr, weight_decay=weight_decay) if weight_decay else cls(lr=lr)


def build_mlp(n_in, hidden, n_out, activation="relu", dropout=0.0, seed=0):
    """Linear -> activation (-> Dropout) for each hidden size, then a Linear output layer."""
    import xpdnn as xd

    act = _activation(activation)
    init = "he" if activation in ("relu", "leakyrelu", "elu", "gelu", "silu") else "glorot"
    layers, size = [], n_in
    for i, h in enumerate(hidden):
        layers += [xd.Linear(size, h, init=init, seed=seed + i), act()]
        if dropout:
            layers.append(xd.Dropout(dropout, seed=seed))
        size = h
    layers.append(xd.Linear(size, n_out, init="glorot", seed=seed + len(hidden)))
    return xd.Sequential(*layers)


def cmd_train(args) -> int:
    import numpy as np

    import xpdnn as xd
    from xpdnn import devices

    backend, note = devices.resolve(args.backend)
    print(note)
    X, y = xd.datasets.load_digits()
    X_tr, X_te, y_tr, y_te = xd.datasets.train_test_split(X, y, test_size=args.test_size, seed=args.seed)
    print(f"dataset: digits, {X_tr.shape[0]} train / {X_te.shape[0]} test samples, "
          f"{X.shape[1]} features, {int(y.max()) + 1} classes (stratified split, seed {args.seed})")
    put = lambda a: devices.put(a, backend)
    X_tr, X_te, y_tr, y_te = map(put, (X_tr, X_te, y_tr, y_te))
    hidden = [int(h) for h in args.hidden.split(",") if h.strip()]
    pre = _preprocessing(args.preprocess)
    n_in = X.shape[1]
    if pre is not None:
        pre.fit(X_tr)                      # statistics from the training part only
        n_in = pre.output_size()
        print(f"preprocessing: {pre!r} fitted on the training set")
    net = build_mlp(n_in, hidden, int(y.max()) + 1, args.activation, args.dropout, args.seed)
    net.preprocessing = pre
    print(net.summary())
    callbacks = []
    if args.diagnostics:
        from xpdnn.diagnostics import diagnostics_callbacks
        callbacks = diagnostics_callbacks(pre.transform(X_tr) if pre is not None else X_tr)
    trainer = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(),
                         optimizer=_optimizer(args.optimizer, args.lr, args.momentum, args.weight_decay),
                         batch_size=args.batch_size, epochs=args.epochs, seed=args.seed,
                         progress=not args.quiet, callbacks=callbacks)
    t0 = time.perf_counter()
    history = trainer.fit(X_tr, y_tr, validation=(X_te, y_te))
    seconds = time.perf_counter() - t0
    acc = float(np.mean(xd._backend.to_numpy(net.predict(X_te)) == xd._backend.to_numpy(y_te)))
    per_epoch = sum(history["time"]) / max(len(history["time"]), 1)
    print(f"trained {len(history['loss'])} epochs in {seconds:.1f} s ({per_epoch * 1000:.0f} ms/epoch)")
    print(f"test accuracy: {acc:.4f}")
    if args.diagnostics:
        from xpdnn.diagnostics import format_diagnostics
        print(format_diagnostics(history))
    if args.save:
        trainer.save(args.save)
        print(f"saved model and optimizer state to {args.save}")
    return 0


def _preprocessing(spec):
    """``none``, ``mean``, ``standardize``, ``minmax``, ``pca:K``, ``pca-whiten:K`` or ``zca``."""
    from xpdnn import preprocessing as P

    name, _, k = spec.partition(":")
    k = int(k) if k else None
    table = {"none": lambda: None, "mean": P.MeanSubtraction, "standardize": P.Standardizer,
             "minmax": P.MinMaxScaler, "pca": lambda: P.PCA(k), "pca-whiten": lambda: P.PCA(k, whiten=True),
             "zca": P.ZCA}
    if name not in table:
        raise SystemExit(f"xpdnn: unknown preprocessing {spec!r}; choose from {sorted(table)}")
    return table[name]()


def cmd_info(args) -> int:
    import importlib

    import numpy as np

    import xpdnn
    from xpdnn import devices

    print(f"xpdnn {xpdnn.__version__}, Python {platform.python_version()} on {platform.machine()}")
    from xpdnn.kernels import cpu

    if cpu._cblas() is not None:
        fast = "on"
    elif os.environ.get("XPDNN_NO_BLAS_FASTPATH"):
        fast = "off (XPDNN_NO_BLAS_FASTPATH is set)"
    else:
        fast = "off (this NumPy does not bundle scipy-openblas; plain NumPy is used)"
    print(f"numpy {np.__version__}  (BLAS: {_blas_name(np)}; fused SGD step / BLAS fast path: {fast})")
    ok, why = devices.cuda_available()
    try:
        import cupy
        print(f"cupy {cupy.__version__}  (CUDA usable: {'yes' if ok else 'no'}: {why})")
    except Exception:
        print("cupy: not installed (pip install 'xpdnn[cuda13]' or 'xpdnn[cuda12]')")
    for name in ("torch", "array_api_strict", "array_api_compat"):
        try:
            mod = importlib.import_module(name)
            extra = ""
            if name == "torch":
                extra = f"  (CUDA: {'yes' if mod.cuda.is_available() else 'no'}, threads: {mod.get_num_threads()})"
            print(f"{name} {mod.__version__}{extra}")
        except ImportError:
            print(f"{name}: not installed")
    return 0


def _blas_name(np):
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version', '')}".strip()
    except Exception:
        return "unknown"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="xpdnn", description="Train and benchmark MLPs on any Array API backend.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train an MLP on the digits dataset (ships with scikit-learn)")
    t.add_argument("--backend", default="auto", help="numpy | cupy | torch | array_api_strict | auto (default)")
    t.add_argument("--hidden", default="256", help="hidden layer sizes, comma separated (default 256)")
    t.add_argument("--activation", default="relu", help="relu (default), tanh, sigmoid, ...")
    t.add_argument("--dropout", type=float, default=0.1, help="dropout rate after each hidden layer (default 0.1)")
    t.add_argument("--optimizer", default="sgd", help="sgd (default), nesterov, adam, adamw, rmsprop, adagrad")
    t.add_argument("--lr", type=float, default=0.05, help="learning rate (default 0.05)")
    t.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    t.add_argument("--weight-decay", type=float, default=1e-4, help="L2 weight decay on weights (default 1e-4)")
    t.add_argument("--epochs", type=int, default=30, help="epochs (default 30)")
    t.add_argument("--batch-size", type=int, default=32, help="mini-batch size (default 32)")
    t.add_argument("--test-size", type=float, default=0.25, help="held-out fraction (default 0.25)")
    t.add_argument("--seed", type=int, default=0, help="seed for init, shuffling and dropout (default 0)")
    t.add_argument("--preprocess", default="none",
                   help="none (default), mean, standardize, minmax, pca:K, pca-whiten:K, zca (fitted on the train split)")
    t.add_argument("--diagnostics", action="store_true",
                   help="record gradient flow, dead ReLUs and saturation per epoch and print them")
    t.add_argument("--save", default=None, help="write the trained model (and optimizer state) here")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)

    i = sub.add_parser("info", help="list usable backends, versions and the BLAS NumPy uses")
    i.set_defaults(func=cmd_info)

    b = sub.add_parser("bench", add_help=False,
                       help="benchmark backends against PyTorch and scikit-learn (xpdnn bench --help)")
    b.set_defaults(func=None)

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "bench":
        from .bench import main as bench_main
        return bench_main(argv[1:])
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except (RuntimeError, ValueError, ImportError) as exc:
        print(f"xpdnn: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
