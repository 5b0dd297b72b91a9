"""Saving and loading models without pickle.

One file in the safetensors format: the tensors are the parameters and buffers (by stable path,
``layers.0.W``), the optimizer's state (``optim/<path>/<name>/<slot>``) and a fitted preprocessing transformer's statistics
(``preprocessing/<name>``), a checkpoint's loss parameters (``loss/<path>``) and callback
state (``callbacks/<i>/<name>``); the header's metadata
holds ``xpdnn`` = JSON with the format version, the architecture, the optimizer's configuration
and scalars, the Philox counter and the epoch.  Files are written to a temporary file in the
same folder, fsynced, and renamed over the target, so a crash mid-save leaves the previous file.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from . import _backend as B
from .layers.base import layer_from_config, layer_to_config

FORMAT = "xpdnn/1"
_OPT = "optim/"
_PRE = "preprocessing/"
_LOSS = "loss/"
_CB = "callbacks/"
_EXTRAS = (_OPT, _PRE, _LOSS, _CB)


def _host(a) -> np.ndarray:
    return np.ascontiguousarray(B.to_numpy(a))


def save(net, path, *, trainer=None, optimizer=None) -> None:
    """Write ``net`` (and, for a checkpoint, ``trainer``'s optimizer, RNG counter and epoch)."""
    from safetensors.numpy import save as st_save

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
    blob = st_save(tensors, metadata={"xpdnn": json.dumps(meta)})
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".xpdnn-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read(path):
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such model file: {path}")
    try:
        with safe_open(path, framework="numpy") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path} is not a readable xpdnn model file (corrupt or truncated?): {exc}") from exc
    if "xpdnn" not in header:
        raise ValueError(f"{path} is a safetensors file but not an xpdnn model (no xpdnn metadata)")
    try:
        meta = json.loads(header["xpdnn"])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: the xpdnn metadata is not valid JSON ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported xpdnn file format {meta.get('format')!r} (expected {FORMAT})")
    return meta, tensors


def load_checkpoint(path, *, extras: bool = False):
    """(net, optimizer meta or None, optimizer arrays, trainer meta or None), and with
    ``extras`` a fifth item: ({name: array} of a parameterized loss, {callback index: {name:
    array}}), from one read of the file."""
    meta, tensors = _read(path)
    try:
        net = layer_from_config(meta["architecture"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: the architecture in the file is invalid ({exc})") from exc
    weights = {k: v for k, v in tensors.items() if not k.startswith(_EXTRAS)}
    if meta.get("preprocessing") is not None:
        from .preprocessing import transformer_from_state
        pre_arrays = {k[len(_PRE):]: v for k, v in tensors.items() if k.startswith(_PRE)}
        try:
            net.preprocessing = transformer_from_state(meta["preprocessing"], pre_arrays)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: the preprocessing in the file is invalid ({exc})") from exc
    opt_arrays = {k[len(_OPT):]: v for k, v in tensors.items() if k.startswith(_OPT)}
    for k, v in weights.items():
        if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
            raise ValueError(f"{path}: tensor {k} contains NaN or Inf")
    try:
        net.load_state_arrays(weights)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    if hasattr(net, "fresh"):
        net.fresh = False
    out = (net, meta.get("optimizer"), opt_arrays, meta.get("trainer"))
    return out + (_trainer_extras(path, tensors),) if extras else out


def _trainer_extras(path, tensors):
    loss = {k[len(_LOSS):]: v for k, v in tensors.items() if k.startswith(_LOSS)}
    callbacks: dict = {}
    for k, v in tensors.items():
        if k.startswith(_CB):
            i, name = k[len(_CB):].split("/", 1)
            callbacks.setdefault(int(i), {})[name] = v
    for k, v in loss.items():
        if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
            raise ValueError(f"{path}: tensor {_LOSS}{k} contains NaN or Inf")
    return loss, callbacks


def load(path):
    """Read a model written by :func:`save`; its parameters are host NumPy arrays (they move
    next to the data on first use, or call ``net.to(like=array)``)."""
    return load_checkpoint(path)[0]


def load_optimizer(path):
    """The optimizer saved in a checkpoint, with its state (None if the file has none)."""
    from .optim.base import optimizer_from_state

    _, opt_meta, opt_arrays, _ = load_checkpoint(path)
    if opt_meta is None:
        return None
    opt = optimizer_from_state(opt_meta)
    opt.load_state_dict(opt_meta, opt_arrays)
    return opt
