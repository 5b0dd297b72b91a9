"""Command line: ``xpdnn train``, ``predict``, ``info``, ``export``, ``selftest`` and ``bench``.

``xpdnn train`` trains on the digits, or on the user's data with ``--data`` (a CSV table, an
``.npz`` archive or a folder of MNIST IDX files, read by :func:`xpdnn.datasets.files.load_dataset`);
``xpdnn predict MODEL DATA`` writes a saved model's predictions as CSV, ``xpdnn info MODEL``
describes a saved model and ``xpdnn export MODEL OUT.onnx`` writes it as ONNX.  What a model
was trained on (classes, feature columns, target) rides in its checkpoint as the state of the
:class:`DatasetInfo` callback.

Bad input is reported in one line and never as a traceback: a flag out of range, an unknown
name (names are case-insensitive; the message lists the valid ones), a missing input file or an
output path that cannot be written is an argparse error (``xpdnn train: error: ...``, exit
status 2) before any work starts; a failure while running (a malformed data file, no usable
CUDA device, a diverged run, out of memory) is ``xpdnn: error: ...`` with exit status 1, and
every file the CLI writes (model, predictions, plot, ONNX) is written atomically, so nothing is
left half-way.  Warnings raised while a command runs print as one ``xpdnn: <kind>: ...`` line
each, without the source line Python's default format echoes.  Output cut short by a closed
pipe (``xpdnn info | head -1``) ends the program quietly, as the Python documentation
recommends (the signal module's "Note on SIGPIPE",
https://docs.python.org/3/library/signal.html#note-on-sigpipe).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager

from .callbacks import Callback

ACTIVATIONS = ("relu", "tanh", "sigmoid", "leakyrelu", "elu", "gelu", "silu", "softplus")
_ACTIVATION_CLASSES = {"relu": "ReLU", "tanh": "Tanh", "sigmoid": "Sigmoid", "leakyrelu": "LeakyReLU",
                       "elu": "ELU", "gelu": "GELU", "silu": "SiLU", "softplus": "Softplus"}
OPTIMIZERS = ("sgd", "nesterov", "adam", "adamw", "rmsprop", "adagrad")
_OPTIMIZER_STATE = {"sgd": 1, "nesterov": 1, "adam": 2, "adamw": 2, "rmsprop": 1, "adagrad": 1}  # arrays per parameter
BACKENDS = ("auto", "numpy", "cupy", "torch", "array_api_strict")
TASKS = ("classify", "regress")
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


def _existing_path(text) -> str:
    """A file or folder that exists (the data to read), or ArgumentTypeError."""
    if not text or not text.strip():
        raise argparse.ArgumentTypeError("the path is empty")
    if not os.path.exists(os.path.expanduser(text)):
        raise argparse.ArgumentTypeError(f"{text!r} does not exist")
    return os.path.expanduser(text)


def _existing_file(text) -> str:
    path = _existing_path(text)
    if not os.path.isfile(path):
        raise argparse.ArgumentTypeError(f"{text!r} is not a file")
    return path


def _delimiter(text) -> str:
    value = {"tab": "\t", "\\t": "\t"}.get(text, text)
    if len(value) != 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give one character (or 'tab')")
    return value


def _check_train_args(args) -> None:
    """Flags that only mean something with --data (or with one kind of file) are refused as an
    argparse error before anything runs."""
    data_flags = {"target": "--target", "header": "--header", "delimiter": "--delimiter", "x_key": "--x-key",
                  "y_key": "--y-key", "task": "--task"}
    if args.data is None:
        given = [flag for key, flag in data_flags.items() if getattr(args, key) is not None]
        if given:
            args.subparser.error(f"argument {given[0]}: needs --data PATH (without it xpdnn trains on the digits)")


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


class DatasetInfo(Callback):
    """What ``xpdnn train`` trained on: the data's kind (``source``) and ``path``, the ``task``,
    the class labels in output order (``classes``), the feature columns' names
    (``feature_names``), the ``target`` column (name, or 0-based index) and whether regression
    targets were standardized and the scaling folded into the last layer
    (``target_scaling="folded"``).  A callback only so that it rides in the checkpoint:
    ``Trainer.save`` keeps every callback's state.  ``xpdnn predict`` reads a file the way
    training did and writes labels by their names from it; ``xpdnn info`` shows it."""

    KEYS = ("source", "path", "task", "classes", "feature_names", "target", "target_scaling")

    def __init__(self, info=None):
        self.info = check_dataset_info({k: v for k, v in dict(info or {}).items() if v is not None})

    def state_dict(self):
        return dict(self.info), {}

    def check_state(self, state, arrays, trainer):
        check_dataset_info(state)

    def load_state_dict(self, state, arrays):
        self.info = check_dataset_info(dict(state))


def check_dataset_info(info: dict) -> dict:
    """``info`` if every field has the type ``xpdnn predict`` relies on, else ValueError."""
    if not isinstance(info, dict):
        raise ValueError(f"the dataset description must be a JSON object, got {type(info).__name__}")
    unknown = sorted(set(info) - set(DatasetInfo.KEYS))
    if unknown:
        raise ValueError(f"unknown dataset fields {unknown}")
    for key in ("source", "path"):
        if info.get(key) is not None and not isinstance(info[key], str):
            raise ValueError(f"{key} must be a string, got {info[key]!r}"[:120])
    if info.get("task") is not None and info["task"] not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {info['task']!r}"[:120])
    classes = info.get("classes")
    if classes is not None and (not isinstance(classes, list) or not classes or any(
            isinstance(c, bool) or not isinstance(c, (int, float, str)) for c in classes)):
        raise ValueError("classes must be a non-empty list of numbers or names")
    names = info.get("feature_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise ValueError("feature_names must be a list of names")
    target = info.get("target")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, str))):
        raise ValueError(f"target must be a column name or index, got {target!r}"[:120])
    if info.get("target_scaling") not in (None, "folded"):
        raise ValueError(f"target_scaling must be 'folded' or absent, got {info['target_scaling']!r}"[:120])
    return info


def saved_dataset_info(checkpoint) -> dict:
    """The :class:`DatasetInfo` of a checkpoint read with :func:`xpdnn.io.read_checkpoint`
    ({} when the file has none: a model saved from Python, or trained on the digits by an
    older version); a malformed one is a ModelFileError."""
    from xpdnn.io import ModelFileError

    for entry in (checkpoint.trainer or {}).get("callbacks", []):
        if entry.get("type") == "DatasetInfo" and entry.get("state") is not None:
            try:
                return check_dataset_info(dict(entry["state"]))
            except (ValueError, TypeError) as exc:
                raise ModelFileError(f"{checkpoint.path}: the dataset description is invalid: {exc}") from None
    return {}


def _training_data(args):
    """(Dataset, description) of what ``xpdnn train`` trains on: the digits, or ``--data``."""
    from xpdnn.datasets.files import Dataset, load_dataset

    if args.data is None:
        import xpdnn as xd

        X, y = xd.datasets.load_digits()
        return Dataset("digits", "digits", X, y, "classify", list(range(10))), "digits"
    data = load_dataset(args.data, target=args.target, header=args.header, delimiter=args.delimiter,
                        x_key=args.x_key, y_key=args.y_key, task=args.task)
    what = {"csv": "CSV", "npz": ".npz", "mnist": "MNIST IDX folder"}[data.kind]
    if data.kind == "csv":
        what += f", target column {data.target!r}" if isinstance(data.target, str) else \
            f", target column {data.target} (0-based)"
    if data.task == "classify" and len(data.classes) < 2:
        raise CLIError(f"--data {args.data}: every target is {data.classes[0]!r}: one class, nothing to learn")
    return data, f"{args.data} ({what})"


def _split(data, args):
    """(X_train, X_test, y_train, y_test, how): the data's own test set, or a seeded split
    (stratified by class for classification)."""
    import xpdnn as xd

    if data.X_test is not None:
        return data.X, data.X_test, data.y, data.y_test, "the folder's t10k files as the test set"
    stratify = data.task == "classify"
    X_tr, X_te, y_tr, y_te = xd.datasets.train_test_split(data.X, data.y, test_size=args.test_size, seed=args.seed,
                                                          stratify=stratify)
    if len(y_tr) == 0 or len(y_te) == 0:
        raise CLIError(f"--test-size {args.test_size} leaves {len(y_tr)} training and {len(y_te)} test samples "
                       f"of {len(data.y)}; both parts need at least one")
    return X_tr, X_te, y_tr, y_te, f"{'stratified' if stratify else 'random'} split, seed {args.seed}"


def _fold_target_scaling(net, mean, scale):
    """Fold ``y = y_std * scale + mean`` into the last Linear layer (W <- scale W, b <- scale b +
    mean), so the trained net predicts in the targets' own units."""
    import numpy as np

    from xpdnn import _backend as B

    last = net.layers[-1]
    W = B.to_numpy(last.params["W"]).astype(np.float64)
    b = B.to_numpy(last.params["b"]).astype(np.float64)
    last.set_parameters(W=W * scale[:, None], b=b * scale + mean)


def cmd_train(args) -> int:
    """``xpdnn train``.  Started by ``mpiexec``/``srun`` or ``torchrun``, this process is one rank
    of a data-parallel job (:mod:`xpdnn.distributed`): rank 0 prints and writes files, each rank
    uses the GPU of its ``local_rank``, and a rank that fails ends the job."""
    from xpdnn import distributed

    if distributed.launched() is None:
        return _train(args)
    comm = distributed.init()
    if comm.size > 1 and args.backend in ("cupy", "auto"):
        _use_local_gpu(comm.local_rank)
    try:
        with contextlib.redirect_stdout(sys.stdout if comm.rank == 0 else open(os.devnull, "w")):
            code = _train(args)
    except Exception as exc:
        if comm.size > 1:                   # the other ranks would wait for this one: end the job now
            comm.abort(f"rank {comm.rank} of {comm.size} failed: {type(exc).__name__}: {exc}")
        raise
    comm.close()
    return code


def _use_local_gpu(local_rank: int) -> None:
    """Make GPU ``local_rank`` (modulo the GPUs this machine has) CuPy's current device."""
    try:
        import cupy
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:                       # no CuPy or no GPU: the backend choice reports it
        return
    if count:
        cupy.cuda.Device(local_rank % count).use()


def _rank0() -> bool:
    from xpdnn import distributed
    comm = distributed.current()
    return comm is None or comm.rank == 0


def _train(args) -> int:
    import numpy as np

    import xpdnn as xd
    from xpdnn import devices

    if args.plot:
        from xpdnn.plot import check_plot_path
        check_plot_path(args.plot)          # matplotlib present and a format it writes: before training
    backend, note = _resolve_backend(args.backend)
    print(note)
    data, source = _training_data(args)
    X_tr, X_te, y_tr, y_te, how = _split(data, args)
    classify = data.task == "classify"
    n_in = data.X.shape[1]
    n_out = len(data.classes) if classify else (1 if data.y.ndim == 1 else data.y.shape[1])
    targets = f"{n_out} classes" if classify else f"{n_out} target{'s' if n_out > 1 else ''} to regress"
    print(f"dataset: {source}, {X_tr.shape[0]} train / {X_te.shape[0]} test samples, "
          f"{n_in} features, {targets} ({how})")
    if args.data is not None:
        print(f"task: {'classify' if classify else 'regress'} ({data.task_note})")
    name, k = args.preprocess or (("none", None) if args.data is None else ("standardize", None))
    if k is not None and k > n_in:
        raise CLIError(f"--preprocess {name}:{k}: the {'digits have' if args.data is None else 'data has'} only "
                       f"{n_in} features; K must be <= {n_in}")
    check_model_size(k or n_in, args.hidden, n_out, batch_size=min(args.batch_size, len(y_tr)), optimizer=args.optimizer,
                     n_eval=len(y_te), backend=backend)
    y_mean = y_scale = None
    if not classify:                        # train on standardized targets (statistics of the training split)
        y_mean = np.mean(y_tr.reshape(len(y_tr), -1), axis=0, dtype=np.float64)
        y_scale = np.std(y_tr.reshape(len(y_tr), -1), axis=0, dtype=np.float64)
        y_scale[y_scale == 0] = 1.0
        shape = y_tr.shape[1:]
        y_tr = ((y_tr.reshape(len(y_tr), -1) - y_mean) / y_scale).astype(np.float32).reshape((-1, *shape))
        y_te_std = ((y_te.reshape(len(y_te), -1) - y_mean) / y_scale).astype(np.float32).reshape((-1, *shape))
    put = lambda a: devices.put(a, backend)
    X_tr, X_te, y_tr = map(put, (X_tr, X_te, y_tr))
    y_val = put(y_te if classify else y_te_std)
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
    info = {"source": data.kind, "path": None if args.data is None else str(args.data), "task": data.task,
            "classes": data.classes, "feature_names": data.feature_names, "target": data.target,
            "target_scaling": None if classify else "folded"}
    callbacks.append(DatasetInfo(info))
    loss = xd.SoftmaxCrossEntropy() if classify else xd.MSE()
    # the one place the trainer is made
    trainer = xd.Trainer(net, loss=loss,
                         optimizer=_optimizer(args.optimizer, args.lr, args.momentum, args.weight_decay),
                         batch_size=args.batch_size, epochs=args.epochs, seed=args.seed,
                         progress=not args.quiet, callbacks=callbacks)
    t0 = time.perf_counter()
    with warnings.catch_warnings():         # a diverging run is reported by the trainer's NaN check
        warnings.filterwarnings("ignore", "(overflow|invalid value) encountered", RuntimeWarning)
        history = trainer.fit(X_tr, y_tr, validation=(X_te, y_val))
    seconds = time.perf_counter() - t0
    if not classify:
        _fold_target_scaling(net, y_mean, y_scale)
    times = history.get("time", [])
    per_epoch = sum(times) / max(len(times), 1)
    print(f"trained {len(history.get('loss', []))} epochs in {seconds:.1f} s ({per_epoch * 1000:.0f} ms/epoch)"
          + ("" if classify else "; losses are on standardized targets"))
    pred = xd._backend.to_numpy(net.predict(X_te))
    if classify:
        print(f"test accuracy: {float(np.mean(pred == y_te)):.4f}")
    else:
        t = y_te.reshape(len(y_te), -1).astype(np.float64)
        err = pred.reshape(len(y_te), -1).astype(np.float64) - t
        total = np.sum((t - t.mean(axis=0)) ** 2, axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):  # R^2 per output, averaged (scikit-learn's r2_score)
            r2 = float(np.mean(1.0 - np.sum(err ** 2, axis=0) / total)) if np.all(total > 0) else float("nan")
        print(f"test RMSE: {float(np.sqrt(np.mean(err ** 2))):.4g}  R^2: {r2:.4f}")
    if args.diagnostics:
        from xpdnn.diagnostics import format_diagnostics
        print(format_diagnostics(history))
    if args.save:
        try:
            trainer.save(args.save)
        except OSError as exc:
            raise CLIError(f"--save {args.save}: could not write the trained model ({exc})") from None
        print(f"saved model and optimizer state to {args.save}")
    if args.plot and _rank0():
        xd.plot_history(history, args.plot)
        print(f"learning curves written to {args.plot}")
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


def _distributed_engines() -> str:
    """Which data-parallel engines are importable (without starting MPI or a process group)."""
    import importlib.util

    found = []
    if importlib.util.find_spec("mpi4py") is not None:
        import mpi4py
        found.append(f"mpi (mpi4py {mpi4py.__version__})")
    try:
        import torch.distributed as dist
        if dist.is_available():
            kinds = [k for k, ok in (("gloo", dist.is_gloo_available()), ("nccl", dist.is_nccl_available())) if ok]
            found.append(f"torch ({', '.join(kinds) or 'no backend'})")
    except ImportError:
        pass
    return ", ".join(found) or "none (pip install \"xpdnn[mpi]\" for MPI)"


def cmd_info(args) -> int:
    if getattr(args, "model", None) is not None:
        print(describe_model(args.model))
        return 0
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
    from xpdnn import kernels
    print(f"compiled NumPy kernels (numba, the fast extra): {kernels.jit_status()}")
    print(f"data-parallel engines: {_distributed_engines()}")
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


def _read_model(path):
    """(checkpoint, net) of a saved model; a file holding a transformer alone is refused."""
    from .io import read_checkpoint

    ck = read_checkpoint(path)
    net = ck.build_net()
    if not getattr(net, "layers", None):
        kind = type(net.preprocessing).__name__ if getattr(net, "preprocessing", None) is not None else "nothing"
        raise CLIError(f"{path} holds a fitted {kind} alone, not a network")
    return ck, net


def _head(net):
    """The head the net's outputs are read with (:mod:`xpdnn.heads`); a net without one is read
    as softmax logits, as ``predict`` does."""
    if net.head is not None:
        return net.head
    return "softmax" if (net.output_size(net.n_in) or 0) > 1 else None


def _number(v, dtype) -> str:
    return format(float(v), ".9g" if dtype == "float32" else ".17g")


def _prediction_table(net, X, info, proba):
    """(header, columns): the CSV columns of ``xpdnn predict``: class labels (by their names
    when the model knows them) or regression outputs, and the probabilities with ``proba``."""
    from . import _backend as B
    from . import heads

    head = _head(net)
    if proba:
        try:
            heads.check_probabilities(head)
        except ValueError as exc:
            raise CLIError(f"--proba: {exc}") from None
    out = B.to_numpy(net.predict(X))
    classes = info.get("classes")
    columns, names = [], []
    if head == "identity":
        out = out.reshape(out.shape[0], -1)
        names = ["prediction"] if out.shape[1] == 1 else [f"prediction_{j}" for j in range(out.shape[1])]
        columns = [[_number(v, net.dtype) for v in out[:, j]] for j in range(out.shape[1])]
    elif out.ndim == 1:
        n_classes = 2 if head == "sigmoid" else net.output_size(net.n_in)
        if classes is not None and len(classes) != n_classes:
            classes = None                      # a description that does not fit: plain indices
        names = ["label"]
        columns = [[str(classes[i]) if classes is not None else str(int(i)) for i in out]]
    else:                                       # multilabel (sigmoid) or signed: one column per output
        names = [f"label_{j}" for j in range(out.shape[1])]
        columns = [[str(int(v)) for v in out[:, j]] for j in range(out.shape[1])]
    if proba:
        P = B.to_numpy(net.predict_proba(X))
        labels = classes if classes is not None and len(classes) == P.shape[1] else list(range(P.shape[1]))
        names += [f"proba_{c}" for c in labels]
        columns += [[_number(v, net.dtype) for v in P[:, j]] for j in range(P.shape[1])]
    return names, columns


def _write_csv(path, names, columns):
    """Write a CSV (header ``names``, then one row per sample) to ``path``, atomically: a
    temporary file in the same folder renamed over it; None writes to stdout."""
    import csv

    rows = zip(*columns) if columns else ()
    if path is None:
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(names)
        w.writerows(rows)
        return
    from .datasets.files import atomic_output

    with atomic_output(path, text=True) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(names)
        w.writerows(rows)


def cmd_predict(args) -> int:
    """``xpdnn predict MODEL DATA``: predictions for every sample of DATA as CSV."""
    from .datasets.files import load_features

    ck, net = _read_model(args.model)
    info = saved_dataset_info(ck)
    n_features = net.n_features
    if n_features is None:
        raise CLIError(f"{args.model}: the network does not say how many features it takes")
    target = info.get("target")
    X = load_features(args.data, n_features, feature_names=info.get("feature_names"),
                      target=target if isinstance(target, int) else None, header=args.header,
                      delimiter=args.delimiter, x_key=args.x_key, kind=args.kind)
    names, columns = _prediction_table(net, X, info, args.proba)
    _write_csv(args.output, names, columns)
    if args.output is not None:
        print(f"wrote {X.shape[0]} predictions ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}) "
              f"to {args.output}")
    return 0


def _layer_text(layer) -> str:
    """``Linear(n_in=64, n_out=10)``: a layer and the settings that say what it computes."""
    skip = ("dtype", "seed", "init", "bias", "fused", "layers", "head")
    args = ", ".join(f"{k}={v!r}" for k, v in layer.get_config().items() if k not in skip)
    return f"{type(layer).__name__}({args})"


def _history_lines(history) -> list:
    """A summary of a training history: epochs, the last epoch's numbers, the best epoch."""
    losses = history.get("loss") or []
    if not losses:
        return ["training history: none stored"]
    keys = [k for k in ("loss", "accuracy", "val_loss", "val_accuracy") if history.get(k)]
    last = ", ".join(f"{k} {history[k][-1]:.4f}" for k in keys if history[k][-1] is not None)
    lines = [f"training history: {len(losses)} epochs; last: {last}"]
    for key, better in (("val_loss", min), ("val_accuracy", max)):
        vals = [(v, i) for i, v in enumerate(history.get(key) or []) if v is not None]
        if len(vals) > 1:
            v, i = better(vals, key=lambda t: t[0])
            lines.append(f"  best {key} {v:.4f} at epoch {i + 1}")
    if history.get("time"):
        lines.append(f"  {sum(t for t in history['time'] if t is not None):.1f} s of training")
    return lines


def describe_model(path) -> str:
    """What ``xpdnn info MODEL`` prints: the file, the layers with their settings and
    parameter counts, the preprocessing, the head, the data it was trained on, the optimizer
    and a summary of the training history, read from the file without training anything."""
    from .io import read_checkpoint

    ck = read_checkpoint(path)
    net = ck.build_net()
    size = os.path.getsize(path)
    lines = [f"model file: {path} ({ck.meta.get('format')}, {size / 1024:.1f} KiB)"]
    pre = getattr(net, "preprocessing", None)
    if not getattr(net, "layers", None):
        what = f"a fitted {pre!r} on {pre.n_features} features" if pre is not None else "nothing"
        return "\n".join(lines + [f"contents: {what} alone, no network"])
    n_in, n_out = net.n_features, net.output_size(net.n_in)
    lines.append(f"network: {len(net.layers)} layers, {net.n_params():,} parameters ({net.dtype}); "
                 f"{n_in} input features -> {n_out} outputs")
    size = net.n_in
    rows = [("layer", "settings", "out", "params")]
    for i, layer in enumerate(net.layers):
        size = layer.output_size(size)
        rows.append((str(i), _layer_text(layer), "?" if size is None else str(size), f"{layer.n_params():,}"))
    widths = [max(len(r[j]) for r in rows) for j in range(4)]
    for r in rows:
        lines.append("  " + "  ".join(c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
    if pre is not None:
        lines.append(f"preprocessing: {pre!r}, fitted on {pre.n_features} features, outputs {pre.output_size()}")
    else:
        lines.append("preprocessing: none")
    head = _head(net)
    reads = {"softmax": "predict_proba gives class probabilities, predict the most probable class",
             "sigmoid": "predict_proba gives per-output probabilities, predict 0/1",
             "identity": "regression: predict gives the outputs",
             "margin": "hinge scores: predict gives the highest-scoring class",
             "signed": "hinge scores: predict gives -1/+1 per output",
             "features": "features for a HierarchicalSoftmax"}
    lines.append(f"head: {head or 'none yet'}" + (f" ({reads[head]})" if head in reads else "")
                 + ("" if net.head is not None or head is None else "; no head stored, read as softmax"))
    info = saved_dataset_info(ck)
    if info:
        parts = [f"{info.get('source', '?')}" + (f" {info['path']!r}" if info.get("path") else ""),
                 f"task {info.get('task', '?')}"]
        if info.get("target") is not None:
            t = info["target"]
            parts.append(f"target column {t!r}" if isinstance(t, str) else f"target column {t} (0-based)")
        classes = info.get("classes")
        if classes:
            shown = ", ".join(map(str, classes[:10])) + (", ..." if len(classes) > 10 else "")
            parts.append(f"{len(classes)} classes: {shown}")
        if info.get("feature_names"):
            names = info["feature_names"]
            parts.append(f"feature columns: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}")
        if info.get("target_scaling") == "folded":
            parts.append("targets standardized in training, scaling folded into the last layer")
        lines.append("trained on: " + "; ".join(parts))
    if ck.optimizer is not None:
        opt = ck.optimizer[0]
        config = ", ".join(f"{k}={v}" for k, v in (opt.get("config") or {}).items())
        lines.append(f"optimizer: {opt.get('type')}({config})")
    if ck.trainer is not None:
        lines.append(f"epochs completed: {ck.trainer.get('epoch')} (seed {ck.trainer.get('seed')})")
        lines += _history_lines(ck.trainer.get("history") or {})
    else:
        lines.append("training history: not stored (saved with xd.save(net), not a trainer checkpoint)")
    return "\n".join(lines)


def cmd_export(args) -> int:
    """``xpdnn export MODEL OUT.onnx``."""
    from .export import export_onnx

    ck, net = _read_model(args.model)
    info = saved_dataset_info(ck)
    metadata = {k: info[k] for k in ("classes", "feature_names", "target", "task") if info.get(k) is not None}
    model = export_onnx(net, args.output, opset=args.opset, metadata=metadata)
    graph = model.graph
    outs = ", ".join(o.name for o in graph.output)
    print(f"exported {args.model} to {args.output} (ONNX opset {model.opset_import[0].version}; input "
          f"{graph.input[0].name}: (N, {net.n_features}) {net.dtype}; outputs: {outs})")
    return 0


def _warning_line(message, category, filename, lineno, file=None, line=None):
    """``warnings.showwarning`` for the command line: one clean line per warning on stderr
    (``xpdnn: diagnostics: ...``), never the source line the default format echoes."""
    label = {"DiagnosticsWarning": "diagnostics", "KernelCheckWarning": "kernel check"}.get(category.__name__,
                                                                                          "warning")
    text = " ".join(str(message).split())
    try:
        sys.stdout.flush()                   # keeps the order of the report in a combined log
        print(f"xpdnn: {label}: {text}", file=sys.stderr if file is None else file, flush=True)
    except (OSError, ValueError):
        pass


@contextmanager
def _warnings_as_lines():
    """Warnings raised while a command runs print as :func:`_warning_line` does (the library
    itself still warns with ``warnings.warn``; only the way the CLI shows them changes)."""
    with warnings.catch_warnings():
        warnings.showwarning = _warning_line
        yield


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

    t = sub.add_parser("train", help="train an MLP on the digits (ships with scikit-learn) or on your data (--data)")
    d = t.add_argument_group("your own data (without --data: the digits)")
    d.add_argument("--data", default=None, type=_existing_path, metavar="PATH",
                   help="a CSV table (plain or .gz), an .npz archive or a folder of MNIST IDX files")
    d.add_argument("--target", default=None, metavar="COLUMN",
                   help="CSV: the target column, by header name or 0-based index (negative from the end; default: last)")
    d.add_argument("--header", default=None, action=argparse.BooleanOptionalAction,
                   help="CSV: the first row holds column names (default: told from the first two rows)")
    d.add_argument("--delimiter", default=None, type=_delimiter, metavar="CHAR",
                   help="CSV: the field separator (default: tab for .tsv, else a comma)")
    d.add_argument("--x-key", default=None, metavar="NAME", help=".npz: the features' array (default: X, x, data, ...)")
    d.add_argument("--y-key", default=None, metavar="NAME", help=".npz: the targets' array (default: y, labels, ...)")
    d.add_argument("--task", default=None, type=_choice(TASKS, "task"),
                   help="classify | regress (default: inferred: names or few integers -> classify; other numbers -> "
                        "regress)")
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
    t.add_argument("--preprocess", default=None, type=_preprocess, metavar="NAME[:K]",
                   help="none, mean, standardize, minmax, pca:K, pca-whiten:K, zca, fitted on the train split "
                        "(default: none for the digits, standardize for --data)")
    t.add_argument("--diagnostics", action="store_true",
                   help="record gradient flow, dead ReLUs and saturation per epoch and print them")
    t.add_argument("--save", default=None, type=check_output_path, metavar="PATH",
                   help="write the trained model (and optimizer state) here; checked before training")
    t.add_argument("--plot", default=None, type=check_output_path, metavar="PATH",
                   help="write the learning curves (loss, accuracy) here, e.g. curves.png (needs matplotlib)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train, check=_check_train_args, subparser=t)

    i = sub.add_parser("info", help="list usable backends, versions and the BLAS NumPy uses; with MODEL, describe it")
    i.add_argument("model", nargs="?", default=None, type=_existing_file, metavar="MODEL",
                   help="a saved model (.xpd): its layers, parameters, preprocessing, head and training history")
    i.set_defaults(func=cmd_info)

    r = sub.add_parser("predict", help="write a saved model's predictions for a data file as CSV")
    r.add_argument("model", type=_existing_file, metavar="MODEL", help="a model saved by xpdnn train --save or xd.save")
    r.add_argument("data", type=_existing_path, metavar="DATA",
                   help="a CSV table (plain or .gz), an .npz archive, an IDX image file or an MNIST folder")
    r.add_argument("-o", "--output", default=None, type=check_output_path, metavar="PATH",
                   help="write the CSV here (atomically) instead of to stdout")
    r.add_argument("--proba", action="store_true", help="add one probability column per class")
    r.add_argument("--header", default=None, action=argparse.BooleanOptionalAction,
                   help="CSV: the first row holds column names (default: told from the first two rows)")
    r.add_argument("--delimiter", default=None, type=_delimiter, metavar="CHAR", help="CSV: the field separator")
    r.add_argument("--x-key", default=None, metavar="NAME", help=".npz: the features' array")
    r.add_argument("--kind", default="test", type=_choice(("test", "train"), "kind"),
                   help="MNIST folder: the t10k (test, default) or train images")
    r.set_defaults(func=cmd_predict)

    e = sub.add_parser("export", help="export a saved model to ONNX (needs the onnx package)")
    e.add_argument("model", type=_existing_file, metavar="MODEL", help="a saved model (.xpd)")
    e.add_argument("output", type=check_output_path, metavar="OUT", help="the .onnx file to write (atomically)")
    e.add_argument("--opset", default=None, type=_int_in(13), metavar="N",
                   help="ONNX opset version (default: 17; LayerNorm needs >= 17)")
    e.set_defaults(func=cmd_export)

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
        if getattr(args, "check", None) is not None:
            args.check(args)                  # flag combinations: an argparse error (exit 2)
        with _warnings_as_lines():
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
