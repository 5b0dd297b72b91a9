"""Command line: ``xpdnn train``, ``xpdnn info``, ``xpdnn selftest`` and ``xpdnn bench``.

Bad input is reported in one line and never as a traceback: a flag out of range, an unknown
name (names are case-insensitive; the message lists the valid ones) or a ``--save`` path that
cannot be written is an argparse error (``xpdnn train: error: ...``, exit status 2) before any
work starts; a failure while running (no usable CUDA device, a diverged run, out of memory) is
``xpdnn: error: ...`` with exit status 1.  Output cut short by a closed pipe (``xpdnn info |
head -1``) ends the program quietly, as the Python documentation recommends (the signal
module's "Note on SIGPIPE", https://docs.python.org/3/library/signal.html#note-on-sigpipe).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
import warnings

ACTIVATIONS = ("relu", "tanh", "sigmoid", "leakyrelu", "elu", "gelu", "silu", "softplus")
_ACTIVATION_CLASSES = {"relu": "ReLU", "tanh": "Tanh", "sigmoid": "Sigmoid", "leakyrelu": "LeakyReLU",
                       "elu": "ELU", "gelu": "GELU", "silu": "SiLU", "softplus": "Softplus"}
OPTIMIZERS = ("sgd", "nesterov", "adam", "adamw", "rmsprop", "adagrad")
_OPTIMIZER_STATE = {"sgd": 1, "nesterov": 1, "adam": 2, "adamw": 2, "rmsprop": 1, "adagrad": 1}  # arrays per parameter
BACKENDS = ("auto", "numpy", "cupy", "torch", "array_api_strict")
PREPROCESSING = ("none", "mean", "standardize", "minmax", "pca", "pca-whiten", "zca")
MAX_PARAMETERS = 1 << 30        # a cap on the MLP's size whatever the memory (4 GiB of float32 weights)
MAX_SEED = 2 ** 32 - 1


class CLIError(Exception):
    """A one-line error for ``xpdnn: error: ...`` (exit status 1)."""


def _activation(name):
    import xpdnn as xd

    key = name.lower()
    if key not in _ACTIVATION_CLASSES or not hasattr(xd, _ACTIVATION_CLASSES[key]):
        raise CLIError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}")
    return getattr(xd, _ACTIVATION_CLASSES[key])


def _optimizer(name, lr, momentum, weight_decay):
    import xpdnn as xd

    name = name.lower()
    if name == "sgd":
        return xd.SGD(lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "nesterov":
        return xd.SGD(lr=lr, momentum=momentum or 0.9, weight_decay=weight_decay, nesterov=True)
    cls = getattr(xd, {"adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSProp", "adagrad": "Adagrad"}.get(name, ""), None)
    if cls is None:
        raise CLIError(f"unknown or unavailable optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    return cls(lr=lr, weight_decay=weight_decay) if weight_decay else cls(lr=lr)


def build_mlp(n_in, hidden, n_out, activation="relu", dropout=0.0, seed=0):
    """Linear -> activation (-> Dropout) for each hidden size, then a Linear output layer."""
    import xpdnn as xd

    act = _activation(activation)
    activation = activation.lower()
    init = "he" if activation in ("relu", "leakyrelu", "elu", "gelu", "silu") else "glorot"
    layers, size = [], n_in
    for i, h in enumerate(hidden):
        layers += [xd.Linear(size, h, init=init, seed=seed + i), act()]
        if dropout:
            layers.append(xd.Dropout(dropout, seed=seed))
        size = h
    layers.append(xd.Linear(size, n_out, init="glorot", seed=seed + len(hidden)))
    return xd.Sequential(*layers)


# -- argument types: each returns the parsed value or raises ArgumentTypeError (one line, exit 2) ------

def _int_in(lo, hi=None):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"{v} is out of range: must be >= {lo}"
                                             + (f" and <= {hi}" if hi is not None else ""))
        return v
    return parse


def _float_in(lo, hi=None, *, lo_open=False, hi_open=False):
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if (v < lo or (lo_open and v == lo)) or (hi is not None and (v > hi or (hi_open and v == hi))):
            left = "(" if lo_open else "["
            right = ("inf)" if hi is None else f"{hi}{')' if hi_open else ']'}")
            raise argparse.ArgumentTypeError(f"{v} is out of range: must be in {left}{lo}, {right}")
        return v
    return parse


def _choice(names, what):
    def parse(text):
        key = text.strip().lower().replace("-", "_") if what == "backend" else text.strip().lower()
        if key not in names:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; choose from {', '.join(names)} "
                                             f"(case-insensitive)")
        return key
    return parse


def _hidden(text):
    """``256,128`` -> (256, 128); ``""`` -> () (no hidden layer: softmax regression)."""
    if not text.strip():
        return ()
    sizes = []
    for item in text.split(","):
        try:
            h = int(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: {item.strip()!r} is not a layer size; give positive "
                                             f"integers separated by commas, e.g. 256,128") from None
        if h < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: layer sizes must be positive, got {h}")
        sizes.append(h)
    return tuple(sizes)


def _preprocess(text):
    """``name`` or ``pca:K`` / ``pca-whiten:K`` -> (name, K or None)."""
    name, colon, k = text.strip().lower().partition(":")
    if name not in PREPROCESSING:
        raise argparse.ArgumentTypeError(f"unknown preprocessing {text!r}; choose from "
                                         f"{', '.join(PREPROCESSING)} (pca and pca-whiten take :K)")
    if not colon:
        return name, None
    if name not in ("pca", "pca-whiten"):
        raise argparse.ArgumentTypeError(f"{text!r}: only pca and pca-whiten take :K")
    try:
        kk = int(k)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: K must be a positive integer, got {k!r}") from None
    if kk < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: K must be a positive integer, got {kk}")
    return name, kk


def check_output_path(text) -> str:
    """A path a file can be written to (atomically, through a temporary file next to it), or
    ArgumentTypeError saying why not: empty, a directory, a missing or unwritable folder."""
    if not text or not text.strip():
        raise argparse.ArgumentTypeError("the path is empty")
    path = os.path.abspath(os.path.expanduser(text))
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give a file name such as {os.path.join(text, 'model.xpd')!r}")
    if os.path.lexists(path) and not os.path.isfile(path):
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a regular file")
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        what = "is not a folder" if os.path.exists(folder) else "does not exist"
        raise argparse.ArgumentTypeError(f"{text!r}: the folder {folder!r} {what}")
    try:                                    # os.access is no proof (root, ACLs, read-only mounts): try it
        fd, probe = tempfile.mkstemp(prefix=".xpdnn-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: cannot write in {folder!r} ({exc.strerror or exc})") from None
    return text


def _short_cuda_reason(why: str) -> str:
    """devices.cuda_available()'s reason, without CuPy's wording about driver versions, which on
    a machine with no NVIDIA GPU misleads."""
    if "not installed" in why:
        return "CuPy is not installed (pip install 'xpdnn[cuda13]' or 'xpdnn[cuda12]')"
    if "InsufficientDriver" in why:
        return "no NVIDIA driver, or one too old for CuPy's CUDA runtime (cudaErrorInsufficientDriver)"
    if "NoDevice" in why:
        return "no CUDA GPU found (cudaErrorNoDevice)"
    return why if len(why) <= 160 else why[:157] + "..."


def _resolve_backend(name):
    """(backend, note) as devices.resolve, with one-line reasons when CUDA is not usable."""
    from xpdnn import devices

    if name in ("auto", "cupy"):
        ok, why = devices.cuda_available()
        if name == "auto":
            return ("cupy", f"backend: cupy ({why})") if ok else \
                ("numpy", f"backend: numpy (no usable CUDA device: {_short_cuda_reason(why)})")
        if not ok:
            raise CLIError(f"--backend cupy: no usable CUDA device: {_short_cuda_reason(why)}; "
                           f"--backend auto would pick numpy")
    try:
        return devices.resolve(name)
    except RuntimeError as exc:
        raise CLIError(f"--backend {name}: {exc}; --backend auto would pick "
                       f"{'cupy' if devices.cuda_available()[0] else 'numpy'}") from None


def _available_bytes(backend):
    """Memory a run may use: the CUDA device's free memory for cupy, else the host's available
    memory (Linux /proc/meminfo MemAvailable, else free physical pages); None if unknown."""
    if backend == "cupy":
        from xpdnn import devices
        return devices.free_bytes("cupy")
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_model_size(n_in, hidden, n_out, *, batch_size, optimizer, n_eval, backend, available=None):
    """Refuse (CLIError) an MLP whose training would not fit: more than MAX_PARAMETERS
    parameters, or an estimate above 80% of the available memory.  The estimate counts float32
    weights, their gradients and the optimizer's state, the float64 host copy made at
    initialization, and the activations of one training batch and of the evaluation set."""
    sizes = [n_in, *hidden, n_out]
    params = sum((a + 1) * b for a, b in zip(sizes, sizes[1:]))
    widest = sum(hidden) + n_out
    need = 4 * params * (2 + _OPTIMIZER_STATE.get(optimizer, 2)) + 8 * max((a + 1) * b for a, b in zip(sizes, sizes[1:]))
    need += 4 * widest * (4 * batch_size + n_eval)
    arch = "-".join(map(str, sizes))
    if params > MAX_PARAMETERS:
        raise CLIError(f"--hidden: a {arch} MLP has {params:,} parameters, over the CLI's cap of "
                       f"{MAX_PARAMETERS:,}; use smaller or fewer hidden layers")
    available = _available_bytes(backend) if available is None else available
    if available is not None and need > 0.8 * available:
        where = "free GPU memory" if backend == "cupy" else "available memory"
        raise CLIError(f"--hidden/--batch-size: training a {arch} MLP ({params:,} parameters) needs about "
                       f"{_gib(need)}, more than the {where} ({_gib(available)}) allows")
    return params, need


def _gib(n):
    return f"{n / 2 ** 30:.1f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.0f} MiB"


def cmd_train(args) -> int:
    import numpy as np

    import xpdnn as xd
    from xpdnn import devices

    backend, note = _resolve_backend(args.backend)
    print(note)
    X, y = xd.datasets.load_digits()
    X_tr, X_te, y_tr, y_te = xd.datasets.train_test_split(X, y, test_size=args.test_size, seed=args.seed)
    if len(y_tr) == 0 or len(y_te) == 0:
        raise CLIError(f"--test-size {args.test_size} leaves {len(y_tr)} training and {len(y_te)} test samples "
                       f"of {len(y)}; both parts need at least one")
    print(f"dataset: digits, {X_tr.shape[0]} train / {X_te.shape[0]} test samples, "
          f"{X.shape[1]} features, {int(y.max()) + 1} classes (stratified split, seed {args.seed})")
    name, k = args.preprocess
    n_in = X.shape[1]
    if k is not None and k > n_in:
        raise CLIError(f"--preprocess {name}:{k}: the digits have only {n_in} features; K must be <= {n_in}")
    n_out = int(y.max()) + 1
    check_model_size(k or n_in, args.hidden, n_out, batch_size=min(args.batch_size, len(y_tr)), optimizer=args.optimizer,
                     n_eval=len(y_te), backend=backend)
    put = lambda a: devices.put(a, backend)
    X_tr, X_te, y_tr, y_te = map(put, (X_tr, X_te, y_tr, y_te))
    pre = _preprocessing(name, k)
    if pre is not None:
        pre.fit(X_tr)                      # statistics from the training part only
        n_in = pre.output_size()
        print(f"preprocessing: {pre!r} fitted on the training set")
    net = build_mlp(n_in, args.hidden, n_out, args.activation, args.dropout, args.seed)
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
    with warnings.catch_warnings():         # a diverging run is reported by the trainer's NaN check
        warnings.filterwarnings("ignore", "(overflow|invalid value) encountered", RuntimeWarning)
        history = trainer.fit(X_tr, y_tr, validation=(X_te, y_te))
    seconds = time.perf_counter() - t0
    acc = float(np.mean(xd._backend.to_numpy(net.predict(X_te)) == xd._backend.to_numpy(y_te)))
    times = history.get("time", [])
    per_epoch = sum(times) / max(len(times), 1)
    print(f"trained {len(history.get('loss', []))} epochs in {seconds:.1f} s ({per_epoch * 1000:.0f} ms/epoch)")
    print(f"test accuracy: {acc:.4f}")
    if args.diagnostics:
        from xpdnn.diagnostics import format_diagnostics
        print(format_diagnostics(history))
    if args.save:
        try:
            trainer.save(args.save)
        except OSError as exc:
            raise CLIError(f"--save {args.save}: could not write the trained model ({exc})") from None
        print(f"saved model and optimizer state to {args.save}")
    return 0


def _preprocessing(name, k=None):
    """``none``, ``mean``, ``standardize``, ``minmax``, ``pca[:K]``, ``pca-whiten[:K]`` or ``zca``."""
    from xpdnn import preprocessing as P

    table = {"none": lambda: None, "mean": P.MeanSubtraction, "standardize": P.Standardizer,
             "minmax": P.MinMaxScaler, "pca": lambda: P.PCA(k), "pca-whiten": lambda: P.PCA(k, whiten=True),
             "zca": P.ZCA}
    if name not in table:
        raise CLIError(f"unknown preprocessing {name!r}; choose from {', '.join(PREPROCESSING)}")
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
        print(f"cupy {cupy.__version__}  (CUDA usable: {'yes: ' + why if ok else 'no: ' + _short_cuda_reason(why)})")
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
        except Exception as exc:              # installed but broken (e.g. a missing shared library)
            print(f"{name}: not usable ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})")
    print(_kernel_check_line(ok))
    print(f"--backend auto picks: {'cupy' if ok else 'numpy'}")
    return 0


SELFTEST_BACKENDS = ("numpy", "torch", "cupy", "jax")


def _backend_list(text):
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in SELFTEST_BACKENDS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(SELFTEST_BACKENDS)}, comma separated")
    return tuple(names)


def cmd_selftest(args) -> int:
    """``xpdnn selftest``: the report of :mod:`xpdnn.selftest`; exit status 1 if anything disagrees."""
    import json

    from xpdnn import selftest

    report = selftest.run(backends=args.backends, with_bandwidth=not args.no_bandwidth)
    print(selftest.format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, default=str)
        print(f"report written to {args.json}")
    return 0 if report["ok"] else 1


def _kernel_check_line(cuda_ok) -> str:
    """What ``xpdnn info`` says about the fused kernels' first-use check, with its cost measured
    here on a CUDA device (the float32 variants a digits run takes)."""
    from xpdnn.kernels import check

    mode = check.mode()
    head = {"off": "off (XPDNN_KERNEL_CHECK=0)", "strict": "strict (XPDNN_KERNEL_CHECK=strict: a mismatch raises)",
            "warn": "on (a mismatch warns and falls back to the portable path)"}[mode]
    if mode == "off":
        return f"fused-kernel first-use check: {head}"
    if not cuda_ok:
        return f"fused-kernel first-use check: {head}; no CUDA device here, so nothing to check"
    import cupy

    from xpdnn.kernels import dropout, softmax_xent

    like = cupy.zeros(1, dtype=cupy.float32)
    costs = []
    probes = [("softmax_xent", lambda: check.xent_probe(softmax_xent, like, "float32", "xent_warp1_f32/scalar")),
              ("dropout", lambda: check.dropout_probe(dropout, like, "vec16"))]
    for kernel, probe in probes:
        try:
            probe()                          # compiles the kernel, which its first real call would do anyway
            t0 = time.perf_counter()
            bad = probe()
            costs.append(f"{kernel} {1e3 * (time.perf_counter() - t0):.1f} ms"
                         + (" (DISAGREES: run xpdnn selftest)" if bad else ""))
        except Exception as exc:
            costs.append(f"{kernel}: failed ({type(exc).__name__})")
    return (f"fused-kernel first-use check: {head}; once per process and kernel variant, nothing per step; "
            f"cost per variant on {check.device_label(like)}: {', '.join(costs)}")


def _blas_name(np):
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version', '')}".strip()
    except Exception:
        return "unknown"


def _bench(argv) -> int:
    """``xpdnn bench``: its own parser (xpdnn/bench/cli.py), with the checks that must come before a
    long run: a non-negative seed, a finite scale and writable --json/--markdown/--plot paths."""
    from . import bench

    p = bench.parser()
    args = p.parse_args(argv)                 # --help and unknown flags end here
    if args.seed < 0:
        p.error(f"argument --seed: {args.seed} is out of range: must be >= 0")
    if args.scale is not None and not math.isfinite(args.scale):
        p.error(f"argument --scale: {args.scale} is not a finite number")
    for flag in ("json", "markdown", "plot"):
        value = getattr(args, flag)
        if value is not None:
            try:
                check_output_path(value)
            except argparse.ArgumentTypeError as exc:
                p.error(f"argument --{flag}: {exc}")
    return bench.main(argv)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xpdnn", description="Train and benchmark MLPs on any Array API backend.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train an MLP on the digits dataset (ships with scikit-learn)")
    t.add_argument("--backend", default="auto", type=_choice(BACKENDS, "backend"),
                   help="numpy | cupy | torch | array_api_strict | auto (default: cupy when CUDA is usable, else numpy)")
    t.add_argument("--hidden", default=(256,), type=_hidden, metavar="SIZES",
                   help="hidden layer sizes, comma separated (default 256; '' for none)")
    t.add_argument("--activation", default="relu", type=_choice(ACTIVATIONS, "activation"),
                   help=f"{', '.join(ACTIVATIONS)} (default relu)")
    t.add_argument("--dropout", type=_float_in(0.0, 1.0, hi_open=True), default=0.1,
                   help="dropout rate after each hidden layer, in [0, 1) (default 0.1)")
    t.add_argument("--optimizer", default="sgd", type=_choice(OPTIMIZERS, "optimizer"),
                   help=f"{', '.join(OPTIMIZERS)} (default sgd)")
    t.add_argument("--lr", type=_float_in(0.0, lo_open=True), default=0.05, help="learning rate, > 0 (default 0.05)")
    t.add_argument("--momentum", type=_float_in(0.0, 1.0, hi_open=True), default=0.9,
                   help="SGD momentum, in [0, 1) (default 0.9)")
    t.add_argument("--weight-decay", type=_float_in(0.0), default=1e-4,
                   help="L2 weight decay on weights, >= 0 (default 1e-4)")
    t.add_argument("--epochs", type=_int_in(1), default=30, help="epochs, >= 1 (default 30)")
    t.add_argument("--batch-size", type=_int_in(1), default=32, help="mini-batch size, >= 1 (default 32)")
    t.add_argument("--test-size", type=_float_in(0.0, 1.0, lo_open=True, hi_open=True), default=0.25,
                   help="held-out fraction, in (0, 1) (default 0.25)")
    t.add_argument("--seed", type=_int_in(0, MAX_SEED), default=0,
                   help=f"seed for init, shuffling and dropout, 0..{MAX_SEED} (default 0)")
    t.add_argument("--preprocess", default=("none", None), type=_preprocess, metavar="NAME[:K]",
                   help="none (default), mean, standardize, minmax, pca:K, pca-whiten:K, zca (fitted on the train split)")
    t.add_argument("--diagnostics", action="store_true",
                   help="record gradient flow, dead ReLUs and saturation per epoch and print them")
    t.add_argument("--save", default=None, type=check_output_path, metavar="PATH",
                   help="write the trained model (and optimizer state) here; checked before training")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)

    i = sub.add_parser("info", help="list usable backends, versions and the BLAS NumPy uses")
    i.set_defaults(func=cmd_info)

    s = sub.add_parser("selftest", help="check this install: backends, fused CUDA kernels, a digits run per backend")
    s.add_argument("--json", default=None, type=check_output_path, metavar="PATH",
                   help="also write the report as JSON here")
    s.add_argument("--backends", default=",".join(SELFTEST_BACKENDS), type=_backend_list, metavar="LIST",
                   help=f"backends for the digits runs, comma separated (default {','.join(SELFTEST_BACKENDS)})")
    s.add_argument("--no-bandwidth", action="store_true", help="skip the kernels' bandwidth figures")
    s.set_defaults(func=cmd_selftest)

    b = sub.add_parser("bench", add_help=False,
                       help="benchmark backends against PyTorch and scikit-learn (xpdnn bench --help)")
    b.set_defaults(func=None)
    return p


def _run(argv) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] == "bench":
            return _bench(argv[1:])
        args = parser().parse_args(argv)
        return args.func(args)
    except BrokenPipeError:
        raise
    except (CLIError, RuntimeError, ValueError, TypeError, ImportError, OSError) as exc:
        print(f"xpdnn: error: {exc}", file=sys.stderr)
        return 1
    except MemoryError as exc:                # cupy's OutOfMemoryError is one too
        print(f"xpdnn: error: out of memory{': ' + str(exc) if str(exc) else ''}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("xpdnn: interrupted", file=sys.stderr)
        return 130


def main(argv=None) -> int:
    """Entry point of the ``xpdnn`` command; returns the exit status."""
    try:
        try:
            return _run(argv)
        finally:                              # also after argparse's SystemExit (--help, usage errors)
            sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away (``| head``): point stdout at devnull so that the interpreter's
        # final flush cannot fail again, and exit quietly with status 1, as the Python docs do
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 1


if __name__ == "__main__":
    sys.exit(main())
