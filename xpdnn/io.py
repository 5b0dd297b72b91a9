"""Saving and loading models without pickle.

One file in the safetensors format: the tensors are the parameters and buffers (by stable path,
``layers.0.W``), the optimizer's state (``optim/<path>/<name>/<slot>``) and a fitted preprocessing transformer's statistics
(``preprocessing/<name>``), a checkpoint's loss parameters (``loss/<path>``) and callback
state (``callbacks/<i>/<name>``); the header's metadata
holds ``xpdnn`` = JSON with the format version, the architecture, the optimizer's configuration
and scalars, the Philox counter and the epoch.

Writing: the whole file is first checked as :func:`load` checks it, and a checkpoint's callback
state as ``Trainer.restore`` checks it (a model that load would refuse, say one holding a NaN
weight, is never written: :class:`ModelFileError`, and the previous file stays).  It is then written to a temporary file in the same folder named after
the target and the writer's process id (``.<name>.<pid>.<random>.tmp``), fsynced, and renamed
over the target, so a crash mid-save leaves the previous file; a later save of the same target
removes the temporaries of writers that are no longer running (never those of a live one).  The
file gets the mode ``open()`` would give it (0666 less the umask).

Reading: a file that is unreadable, truncated, not an xpdnn file, of another format version, or
whose metadata or tensors fail validation raises :class:`ModelFileError` (a ``ValueError``),
whose message names the file and the problem; a missing file raises ``FileNotFoundError``.  The
tensor names, shapes and dtypes in the header are checked against the architecture's expected
state (computed from its config, see :func:`xpdnn.layers.base.state_shapes`) before any tensor
is read or any layer built, so a tiny file declaring a huge layer fails at once.
"""

from __future__ import annotations

import json
import os
import re
import warnings

import numpy as np

from . import _backend as B
from .layers.base import layer_from_config, layer_to_config, state_shapes

FORMAT = "xpdnn/1"
_OPT = "optim/"
_PRE = "preprocessing/"
_LOSS = "loss/"
_CB = "callbacks/"
_EXTRAS = (_OPT, _PRE, _LOSS, _CB)
_FLOATS = {"F16": "float16", "F32": "float32", "F64": "float64"}
_U64 = 1 << 64


class ModelFileError(ValueError):
    """A model or checkpoint file that cannot be used: unreadable, truncated, not an xpdnn
    file, another format version, or metadata or tensors that fail validation (also raised by
    :func:`save` for a model it refuses to write, and by ``Trainer.restore`` for a checkpoint
    that does not fit the trainer).  The message names the file and the problem."""


def _host(a) -> np.ndarray:
    return np.ascontiguousarray(B.to_numpy(a))


def _clip(text, n=300):
    text = str(text)
    return text if len(text) <= n else text[:n] + "..."


def _int(where, v, low=0, high=None):
    if isinstance(v, bool) or not isinstance(v, int) or v < low or (high is not None and v >= high):
        bound = f"in [{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"{where} must be an integer {bound}, got {_clip(repr(v), 60)}")
    return v


def _dict(where, v, optional=False):
    if v is None and optional:
        return None
    if not isinstance(v, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(v).__name__}")
    return v


# -- the checks, shared by save and every reader --------------------------------------------
class _Checked:
    """What :func:`_check_header` found: the metadata's parts and where each tensor belongs."""

    def __init__(self, meta):
        self.meta = meta
        self.weights: dict[str, tuple] = {}          # expected {name: shape} of parameters and buffers
        self.param_shapes: dict[str, tuple] = {}     # {optimizer key: shape} of the parameters
        self.optimizer = None                        # an optimizer built from the file's config
        self.callbacks: dict[int, dict] = {}         # {index: {name: tensor name}}


def _check_header(meta, header) -> _Checked:
    """Validate the metadata and the tensor header {name: (dtype, shape)} without reading any
    tensor data or building any layer.  Raises ValueError naming the problem."""
    from .optim.base import optimizer_from_state

    _dict("the xpdnn metadata", meta)
    if meta.get("format") != FORMAT:
        raise ValueError(f"unsupported xpdnn file format {_clip(repr(meta.get('format')), 60)} (expected {FORMAT})")
    if "architecture" not in meta:
        raise ValueError("the metadata has no architecture")
    ck = _Checked(meta)
    for name, (dtype, shape) in header.items():
        if dtype not in _FLOATS and not name.startswith(_CB):
            raise ValueError(f"tensor {name} has dtype {dtype}; xpdnn files hold float16/32/64 tensors")
    try:
        expected = state_shapes(meta["architecture"])
    except RecursionError:
        raise ValueError("the architecture is nested too deeply") from None
    except Exception as exc:                       # a registered layer built to read its state
        raise ValueError(f"the architecture is invalid ({type(exc).__name__}: {_clip(exc)})") from None
    for path, name, kind, shape in expected:
        full = f"{path}.{name}" if path else name
        if full in ck.weights:
            raise ValueError(f"the architecture holds {full} twice")
        ck.weights[full] = shape
        if kind == "param":
            ck.param_shapes[f"{path}/{name}"] = shape
    weights = {k: v for k, v in header.items() if not k.startswith(_EXTRAS)}
    missing, extra = sorted(set(ck.weights) - set(weights)), sorted(set(weights) - set(ck.weights))
    if missing or extra:
        raise ValueError(f"the tensors do not match the architecture: missing {_clip(missing, 200)}, "
                         f"unexpected {_clip(extra, 200)}")
    for name, shape in ck.weights.items():
        if tuple(weights[name][1]) != tuple(shape):
            raise ValueError(f"tensor {name} has shape {tuple(weights[name][1])}, the architecture says {tuple(shape)}")

    pre = meta.get("preprocessing")
    _dict("preprocessing", pre, optional=True)
    if pre is None and any(k.startswith(_PRE) for k in header):
        raise ValueError("preprocessing tensors without preprocessing metadata")

    loss = {k[len(_LOSS):]: shape for k, (_, shape) in header.items() if k.startswith(_LOSS)}
    for name, shape in loss.items():
        path, _, leaf = name.rpartition(".")
        ck.param_shapes[f"loss1.{path}/{leaf}"] = tuple(shape)

    opt = meta.get("optimizer")
    if opt is None:
        if any(k.startswith(_OPT) for k in header):
            raise ValueError("optimizer tensors without optimizer metadata")
    else:
        _dict("optimizer", opt)
        ck.optimizer = optimizer_from_state(opt)
        if not loss:      # saved with save(net, optimizer=...): a loss's parameters are not in the file
            for k, (_, shape) in header.items():
                key = k[len(_OPT):].rpartition("/")[0]
                if k.startswith(_OPT) and re.match(r"loss\d+\.", key):
                    ck.param_shapes.setdefault(key, tuple(shape))

    trainer = meta.get("trainer")
    if trainer is None:
        if any(k.startswith((_CB, _LOSS)) for k in header):
            raise ValueError("loss or callback tensors without trainer metadata")
        return ck
    _dict("trainer", trainer)
    for key in ("epoch", "seed", "rng"):
        if key not in trainer:
            raise ValueError(f"the trainer metadata has no {key!r}")
    _int("trainer epoch", trainer["epoch"], 0, 1 << 63)
    _int("trainer seed", trainer["seed"], 0, _U64)
    _int("trainer global_step", trainer.get("global_step", 0), 0, 1 << 63)
    rng = _dict("trainer rng", trainer["rng"])
    _int("rng seed", rng.get("seed"), 0, _U64)
    _int("rng counter", rng.get("counter"), 0, _U64)
    history = _dict("trainer history", trainer.get("history", {}))
    for k, v in history.items():
        if not isinstance(v, list):
            raise ValueError(f"history[{_clip(repr(k), 40)}] must be a list, got {type(v).__name__}")
    callbacks = trainer.get("callbacks", [])
    if not isinstance(callbacks, list):
        raise ValueError(f"trainer callbacks must be a list, got {type(callbacks).__name__}")
    for i, entry in enumerate(callbacks):
        _dict(f"callback {i}", entry)
        if not isinstance(entry.get("type"), str):
            raise ValueError(f"callback {i} has no type name")
        _dict(f"callback {i} state", entry.get("state"), optional=True)
    for k in header:
        if k.startswith(_CB):
            i, sep, name = k[len(_CB):].partition("/")
            if not (sep and name and i.isdigit() and i == str(int(i)) and int(i) < len(callbacks)
                    and callbacks[int(i)].get("state") is not None):
                raise ValueError(f"tensor {k} belongs to no callback with saved state")
            ck.callbacks.setdefault(int(i), {})[name] = k
    return ck


_SIZES = {"n_in": 1, "n_out": 1, "n_features": 1, "pieces": 1, "n_classes": 2}


def _miniature(spec):
    """``spec`` with every size shrunk (sizes are checked by ``state_shapes``), so that building
    it runs each constructor's checks of the other fields at no cost."""
    from .layers.base import STATE_RULES

    if not isinstance(spec, dict) or not isinstance(spec.get("config"), dict):
        return spec
    config = dict(spec["config"])
    if spec.get("type") == "Sequential" and isinstance(config.get("layers"), list):
        config["layers"] = [_miniature(sub) for sub in config["layers"]]
    elif spec.get("type") in STATE_RULES:
        for key, small in _SIZES.items():
            if key in config and not (key == "n_classes" and config.get("class_counts") is not None):
                config[key] = small
        if config.get("n_units") is not None:
            config["n_units"] = 1
    return {**spec, "config": config}


def _check_buildable(arch) -> None:
    """What building the architecture would say, from a miniature of it (see :func:`_miniature`)."""
    try:
        with warnings.catch_warnings():      # e.g. init="zeros" warns once, when the net was built
            warnings.simplefilter("ignore")
            layer_from_config(_miniature(arch))
    except RecursionError:
        raise ValueError("the architecture is nested too deeply") from None
    except Exception as exc:
        raise ValueError(f"the architecture is invalid ({type(exc).__name__}: {_clip(exc)})") from None


def _finite(a: np.ndarray, chunk: int = 1 << 20) -> bool:
    """Whether every element is finite, in chunks (no full-size temporary for a big tensor)."""
    flat = a.reshape(-1)
    return all(bool(np.isfinite(flat[i:i + chunk]).all()) for i in range(0, flat.size, chunk))


def _check_tensors(ck: _Checked, tensors: dict):
    """The checks that need the data: every floating tensor finite, the optimizer's state (slots,
    shapes, scalars) and the preprocessing.  Returns the rebuilt transformer (or None)."""
    for k, v in tensors.items():
        if v.dtype.kind == "f" and not _finite(v):
            raise ValueError(f"tensor {k} contains NaN or Inf")
    if ck.optimizer is not None:
        arrays = {k[len(_OPT):]: v for k, v in tensors.items() if k.startswith(_OPT)}
        ck.optimizer.check_state(ck.meta["optimizer"], arrays, ck.param_shapes)
    pre = ck.meta.get("preprocessing")
    if pre is None:
        return None
    from .preprocessing import transformer_from_state
    try:
        return transformer_from_state(pre, {k[len(_PRE):]: v for k, v in tensors.items() if k.startswith(_PRE)})
    except Exception as exc:
        raise ValueError(f"the preprocessing is invalid ({type(exc).__name__}: {_clip(exc)})") from None


# -- writing ---------------------------------------------------------------------------------
def save(net, path, *, trainer=None, optimizer=None) -> None:
    """Write ``net`` (and, for a checkpoint, ``trainer``'s optimizer, RNG counter and epoch), or a
    fitted :mod:`xpdnn.preprocessing` transformer alone (which :func:`load` gives back as such).

    Everything is checked first as :func:`load` would check it; a model load would refuse
    raises :class:`ModelFileError` and leaves any previous file at ``path`` as it was."""
    from safetensors.numpy import save as st_save
    from .preprocessing import Transformer

    if isinstance(net, Transformer):          # stored as a network of no layers with that preprocessing
        from .layers.sequential import Sequential
        net = Sequential(preprocessing=net)

    tensors = {k: _host(v) for k, v in net.state_arrays().items()}
    meta = {"format": FORMAT, "architecture": layer_to_config(net)}
    pre = getattr(net, "preprocessing", None)
    if pre is not None:
        pre_meta, pre_arrays = pre.get_state()
        meta["preprocessing"] = pre_meta
        tensors.update({_PRE + k: _host(v) for k, v in pre_arrays.items()})
    optimizer = optimizer or (trainer.optimizer if trainer is not None else None)
    if optimizer is not None:
        opt_meta, opt_arrays = optimizer.state_dict()
        meta["optimizer"] = opt_meta
        tensors.update({_OPT + k: _host(v) for k, v in opt_arrays.items()})
    if trainer is not None:
        callbacks = []
        for i, cb in enumerate(trainer.callbacks):
            state = cb.state_dict() if hasattr(cb, "state_dict") else None
            if state is not None:
                state, arrays = state
                tensors.update({f"{_CB}{i}/{k}": _host(v) for k, v in arrays.items()})
            callbacks.append({"type": type(cb).__name__, "state": state})
        meta["trainer"] = {"epoch": trainer.epoch, "seed": trainer.seed, "rng": trainer.rng.state_dict(),
                           "global_step": trainer.global_step,
                           "history": trainer.history, "callbacks": callbacks}
        loss_state = getattr(trainer.loss, "state_arrays", None)
        if loss_state is not None:
            tensors.update({_LOSS + k: _host(v) for k, v in loss_state().items()})
    path = os.fspath(path)
    try:
        text = json.dumps(meta)
        header = {k: (_dtype_code(v), tuple(v.shape)) for k, v in tensors.items()}
        ck = _check_header(json.loads(text), header)
        _check_tensors(ck, tensors)
        _check_buildable(ck.meta["architecture"])
        if trainer is not None and hasattr(trainer, "_restore_callbacks"):
            # what Trainer.restore checks of the callbacks' state, on copies of them
            arrays = {i: {name: tensors[k] for name, k in names.items()} for i, names in ck.callbacks.items()}
            trainer._restore_callbacks(path, ck.meta["trainer"].get("callbacks", []), arrays)
    except (ValueError, TypeError, RecursionError) as exc:
        raise ModelFileError(f"refusing to write {path}, load would reject it: {exc}") from None
    _write_atomic(path, st_save(tensors, metadata={"xpdnn": text}))


def _dtype_code(a) -> str:
    for code, name in _FLOATS.items():
        if a.dtype == np.dtype(name):
            return code
    return str(a.dtype)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:              # PermissionError: alive, someone else's
        return True
    return True


def _remove_stale_temporaries(folder: str, base: str) -> None:
    """Delete ``.<base>.<pid>.<random>.tmp`` files left by writers of the same target that are
    no longer running (a save killed mid-write).  POSIX only: elsewhere nothing is removed."""
    if os.name != "posix":
        return
    pattern = re.compile(r"\." + re.escape(base) + r"\.(\d+)\.[0-9a-f]+\.tmp")
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        m = pattern.fullmatch(name)
        if m is None or int(m.group(1)) == os.getpid() or _alive(int(m.group(1))):
            continue
        try:
            os.unlink(os.path.join(folder, name))
        except OSError:
            pass


def _write_atomic(path: str, blob: bytes) -> None:
    """Write ``blob`` to ``path`` whole or not at all (:func:`xpdnn.datasets.files.atomic_output`),
    after removing temporaries that dead writers left next to it."""
    from .datasets.files import atomic_output

    folder, base = os.path.split(os.path.abspath(path))
    _remove_stale_temporaries(folder, base)
    with atomic_output(path) as f:
        f.write(blob)


# -- reading ---------------------------------------------------------------------------------
def _read(path):
    """(checked header, tensors, transformer) of a file, every check passed, or ModelFileError."""
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such model file: {path}")
    try:
        with safe_open(path, framework="numpy") as f:
            header_meta = f.metadata() or {}
            names = list(f.keys())
            header = {}
            for k in names:
                piece = f.get_slice(k)
                header[k] = (piece.get_dtype(), tuple(int(n) for n in piece.get_shape()))
            if "xpdnn" not in header_meta:
                raise ModelFileError(f"{path} is a safetensors file but not an xpdnn model (no xpdnn metadata)")
            try:
                meta = json.loads(header_meta["xpdnn"])
            except (ValueError, RecursionError) as exc:
                raise ModelFileError(f"{path}: the xpdnn metadata is not valid JSON ({_clip(exc)})") from None
            try:
                ck = _check_header(meta, header)
            except (ValueError, TypeError, RecursionError) as exc:
                raise ModelFileError(f"{path}: {exc}") from None
            tensors = {k: f.get_tensor(k) for k in names}
    except ModelFileError:
        raise
    except Exception as exc:       # safetensors' own errors: corrupt, truncated, not safetensors
        raise ModelFileError(f"{path} is not a readable xpdnn model file (corrupt or truncated?): "
                             f"{_clip(exc)}") from None
    try:
        for k, v in tensors.items():
            if tuple(v.shape) != header[k][1]:
                raise ValueError(f"tensor {k} changed while it was read")
        transformer = _check_tensors(ck, tensors)
    except (ValueError, TypeError, RecursionError) as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    return ck, tensors, transformer


class Checkpoint:
    """A checked file, nothing built: ``meta`` (the JSON), ``weights`` {name: array},
    ``optimizer`` (meta, {key/slot: array}) or None, ``trainer`` meta or None, ``loss`` {name:
    array}, ``callbacks`` {index: {name: array}}, ``preprocessing`` (a transformer or None)."""

    def __init__(self, path, ck: _Checked, tensors: dict, transformer):
        self.path, self.meta = os.fspath(path), ck.meta
        self.weights = {k: v for k, v in tensors.items() if not k.startswith(_EXTRAS)}
        opt = {k[len(_OPT):]: v for k, v in tensors.items() if k.startswith(_OPT)}
        self.optimizer = None if ck.meta.get("optimizer") is None else (ck.meta["optimizer"], opt)
        self.trainer = ck.meta.get("trainer")
        self.loss = {k[len(_LOSS):]: v for k, v in tensors.items() if k.startswith(_LOSS)}
        self.callbacks = {i: {name: tensors[k] for name, k in names.items()} for i, names in ck.callbacks.items()}
        self.preprocessing = transformer

    def error(self, problem) -> ModelFileError:
        return ModelFileError(f"{self.path}: {problem}")

    def match(self, what, expected: dict, got: dict) -> None:
        """Raise unless ``got`` has exactly the names and shapes of ``expected`` ({name: array})."""
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        if missing or extra:
            raise self.error(f"the checkpoint does not fit {what}: missing {_clip(missing, 200)}, "
                             f"unexpected {_clip(extra, 200)}")
        for k, v in expected.items():
            if tuple(got[k].shape) != tuple(v.shape):
                raise self.error(f"the checkpoint does not fit {what}: {k} has shape {tuple(got[k].shape)} in "
                                 f"the file, {tuple(v.shape)} in {what}")

    def build_net(self):
        """The file's network with its weights (and preprocessing)."""
        try:
            net = layer_from_config(self.meta["architecture"])
            net.load_state_arrays(self.weights)
        except RecursionError:
            raise self.error("the architecture is nested too deeply") from None
        except Exception as exc:
            raise self.error(f"the architecture is invalid ({type(exc).__name__}: {_clip(exc)})") from None
        if self.preprocessing is not None:
            net.preprocessing = self.preprocessing
        if hasattr(net, "fresh"):
            net.fresh = False
        return net


def read_checkpoint(path) -> Checkpoint:
    """Read and check a file written by :func:`save` in full without building anything
    (:class:`ModelFileError` if it is malformed)."""
    return Checkpoint(path, *_read(path))


def load_checkpoint(path, *, extras: bool = False):
    """(net, optimizer meta or None, optimizer arrays, trainer meta or None), and with
    ``extras`` a fifth item: ({name: array} of a parameterized loss, {callback index: {name:
    array}}), from one read of the file."""
    ck = read_checkpoint(path)
    opt_meta, opt_arrays = ck.optimizer if ck.optimizer is not None else (None, {})
    out = (ck.build_net(), opt_meta, opt_arrays, ck.trainer)
    return out + ((ck.loss, ck.callbacks),) if extras else out


def load(path):
    """Read a model written by :func:`save`; its parameters are host NumPy arrays (they move
    next to the data on first use, or call ``net.to(like=array)``).  A file written from a
    transformer alone gives that transformer back."""
    net = load_checkpoint(path)[0]
    if getattr(net, "layers", None) == [] and getattr(net, "preprocessing", None) is not None:
        return net.preprocessing
    return net


def load_optimizer(path):
    """The optimizer saved in a checkpoint, with its state (None if the file has none)."""
    from .optim.base import optimizer_from_state

    ck = read_checkpoint(path)
    ck.build_net()              # a file load would refuse is refused here too
    if ck.optimizer is None:
        return None
    meta, arrays = ck.optimizer
    try:
        opt = optimizer_from_state(meta)
        opt.load_state_dict(meta, arrays)
    except ValueError as exc:
        raise ck.error(exc) from None
    return opt
