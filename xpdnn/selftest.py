"""``xpdnn selftest``: check an install on whatever the machine has, in about a minute.

* the backends found (NumPy, PyTorch, CuPy, JAX) and their versions;
* every fused CUDA kernel variant (softmax cross-entropy: warp per row for each register width
  and block per row, with 16-byte or scalar loads; dropout: vectorized and element paths; in
  float32, float64 and float16) against the portable path, on the probes of the first-use check
  (:mod:`xpdnn.kernels.check`: tolerances there, dropout bit for bit); skipped, with the reason,
  without a usable CUDA device;
* a 3-epoch digits run on each backend (a small MLP with dropout, SGD with momentum, seed 0)
  compared with NumPy's history: losses within ``rtol`` 1e-4, accuracies within 3e-3 (one
  argmax of 360 may flip where the GEMMs add up in another order);
* a short bandwidth figure per fused kernel (GB/s over the bytes it must move, with the
  device's name).

:func:`run` returns the report as a JSON-ready dict (``report["ok"]`` is False when anything
disagreed); :func:`format_report` renders it compactly.
"""

from __future__ import annotations

import importlib
import platform
import time
import warnings

import numpy as np

RTOL_LOSS = 1e-4
ATOL_ACCURACY = 3e-3
BACKENDS = ("numpy", "torch", "cupy", "jax")


def _version(name):
    try:
        mod = importlib.import_module(name)
    except Exception as exc:
        return None, f"not installed ({type(exc).__name__})"
    return getattr(mod, "__version__", "?"), ""


def find_backends() -> list[dict]:
    """One entry per backend: name, usable, version, device or the reason it is not usable."""
    from .devices import cuda_available

    out = []
    for name in BACKENDS:
        version, why = _version(name)
        entry = {"name": name, "usable": version is not None, "version": version, "note": why}
        if name == "cupy" and version is not None:
            ok, why = cuda_available()
            entry.update(usable=ok, note=why)
        if name == "torch" and version is not None:
            import torch
            entry["note"] = f"CUDA: {'yes' if torch.cuda.is_available() else 'no'}"
        if name == "jax" and version is not None:
            try:
                import jax
                entry["note"] = "devices: " + ", ".join(sorted({d.platform for d in jax.devices()}))
            except Exception as exc:
                entry.update(usable=False, note=f"not usable ({type(exc).__name__}: {exc})")
        out.append(entry)
    return out


# -- the fused kernels --------------------------------------------------------------------------------

def _cuda_kernels():
    """(softmax_xent module, dropout module, make_like(dtype) -> a 1-element device array), or
    (None, None, reason) without a usable CUDA device."""
    from .devices import cuda_available

    ok, why = cuda_available()
    if not ok:
        return None, None, why
    import cupy

    from .kernels import dropout, softmax_xent
    return softmax_xent, dropout, lambda dtype: cupy.zeros(1, dtype=dtype)


def kernel_checks(dtypes=("float32", "float64", "float16")) -> list[dict]:
    """Every fused kernel variant on its probe against the portable path: status pass / fail /
    skip, the difference, the seconds it took (the first call per source includes the NVRTC
    compile)."""
    from .kernels import check
    from .kernels import softmax_xent as xent_source

    xent, dropout, make_like = _cuda_kernels()
    rows = []
    for kernel, tname, variant in check.all_variants(xent_source, dtypes):
        row = {"kernel": kernel, "dtype": tname, "variant": variant}
        if xent is None:
            rows.append({**row, "status": "skip", "detail": "no usable CUDA device", "reason": make_like,
                         "seconds": 0.0})
            continue
        like = make_like(tname)
        t0 = time.perf_counter()
        try:
            detail = (check.xent_probe(xent, like, tname, variant) if kernel == "softmax_xent"
                      else check.dropout_probe(dropout, like, variant))
        except Exception as exc:
            detail = f"it raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        rows.append({**row, "status": "fail" if detail else "pass", "detail": detail,
                     "device": check.device_label(like), "seconds": round(time.perf_counter() - t0, 4)})
    return rows


def bandwidth(n_rows=8192, n_classes=1000, n_dropout=1 << 24, repeat=10) -> list[dict]:
    """GB/s of each fused kernel over the bytes it must move (softmax cross-entropy: read the
    logits, write the gradient, read the labels; dropout: read and write each element), float32,
    timed with CUDA events; skipped without CUDA."""
    xent, dropout, make_like = _cuda_kernels()
    if xent is None:
        return [{"kernel": k, "status": "skip", "detail": "no usable CUDA device", "reason": make_like}
                for k in ("softmax_xent", "dropout")]
    import cupy

    from .kernels import check

    rng = cupy.random.default_rng(0)
    Z = rng.standard_normal((n_rows, n_classes), dtype=cupy.float32)
    y = rng.integers(0, n_classes, n_rows).astype(cupy.int64)
    X = rng.standard_normal(n_dropout, dtype=cupy.float32)
    cases = [("softmax_xent", f"N={n_rows} C={n_classes} float32", 8 * n_rows * n_classes + 8 * n_rows,
              lambda: xent.softmax_xent(Z, y, check=False)),
             ("dropout", f"n={n_dropout} float32", 8 * n_dropout, lambda: dropout.dropout(X, 0.1, 0, 0))]
    out = []
    for name, shape, nbytes, fn in cases:
        fn(), fn()                                            # compile and warm up
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for _ in range(repeat):
            fn()
        end.record()
        end.synchronize()
        seconds = cupy.cuda.get_elapsed_time(start, end) / 1e3 / repeat
        out.append({"kernel": name, "status": "ok", "shape": shape, "bytes": nbytes, "seconds": seconds,
                    "GB/s": round(nbytes / seconds / 1e9, 1), "device": check.device_label(Z)})
    return out


# -- training on each backend --------------------------------------------------------------------------

def _placer(name):
    """(label, put) for each way to run on backend ``name`` here, or [] if it is not usable."""
    import xpdnn as xd

    if name == "numpy":
        return [("numpy", lambda a: a)]
    if name == "cupy":
        return [("cupy", lambda a: xd.devices.put(a, "cupy"))]
    if name == "torch":
        import torch
        out = [("torch-cpu", lambda a: torch.from_numpy(np.ascontiguousarray(a).copy()))]
        if torch.cuda.is_available():
            out.append(("torch-cuda", lambda a: torch.from_numpy(np.ascontiguousarray(a).copy()).to("cuda")))
        return out
    if name == "jax":
        import jax.numpy as jnp
        return [("jax", jnp.asarray)]
    raise ValueError(f"unknown backend {name!r}")


def digits_history(put, epochs=3) -> dict:
    """The history of a digits run (64-32-10 MLP, ReLU, dropout 0.2, SGD momentum 0.9, batch
    64, seed 0) with every array made by ``put`` from its NumPy copy."""
    import xpdnn as xd

    X, y = xd.datasets.load_digits()
    Xtr, Xte, ytr, yte = xd.datasets.train_test_split(X, y, seed=0)
    net = xd.Sequential(xd.Linear(64, 32), xd.ReLU(), xd.Dropout(0.2), xd.Linear(32, 10))
    trainer = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.1, momentum=0.9),
                         batch_size=64, epochs=epochs, seed=0, progress=False)
    hist = trainer.fit(put(Xtr), put(ytr), validation=(put(Xte), put(yte)))
    return {k: [float(v) for v in hist[k]] for k in ("loss", "val_loss", "accuracy", "val_accuracy")}


def compare_histories(got: dict, ref: dict) -> str:
    """"" when ``got`` matches ``ref`` (losses to RTOL_LOSS, accuracies to ATOL_ACCURACY), else
    the worst difference."""
    problems = []
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
        a, b = np.asarray(got[key], dtype=np.float64), np.asarray(ref[key], dtype=np.float64)
        if a.shape != b.shape or not np.all(np.isfinite(a)):
            problems.append(f"{key}: {got[key]} vs NumPy's {ref[key]}")
            continue
        if key.endswith("loss"):
            err = float(np.max(np.abs(a - b) / np.abs(b)))
            if err > RTOL_LOSS:
                problems.append(f"{key} differs by {err:.2g} relative (rtol {RTOL_LOSS:g})")
        else:
            err = float(np.max(np.abs(a - b)))
            if err > ATOL_ACCURACY:
                problems.append(f"{key} differs by {err:.3g} (atol {ATOL_ACCURACY:g})")
    return "; ".join(problems)


def training_runs(backends, epochs=3) -> list[dict]:
    """A digits run on each usable backend in ``backends``, compared with NumPy's."""
    t0 = time.perf_counter()
    ref = digits_history(lambda a: a, epochs)
    rows = [{"backend": "numpy", "status": "pass", "detail": "the reference", "final_loss": ref["loss"][-1],
             "final_val_accuracy": ref["val_accuracy"][-1], "seconds": round(time.perf_counter() - t0, 2)}]
    usable = {b["name"]: b for b in find_backends()}
    for name in backends:
        if name == "numpy":
            continue
        if not usable.get(name, {}).get("usable"):
            rows.append({"backend": name, "status": "skip", "detail": usable.get(name, {}).get("note", "unknown")})
            continue
        for label, put in _placer(name):
            t0 = time.perf_counter()
            try:
                with warnings.catch_warnings():       # JAX without x64 keeps labels as int32: fine here
                    warnings.filterwarnings("ignore", "Explicitly requested dtype", UserWarning)
                    got = digits_history(put, epochs)
                detail = compare_histories(got, ref)
                row = {"final_loss": got["loss"][-1], "final_val_accuracy": got["val_accuracy"][-1]}
            except Exception as exc:
                detail, row = f"it raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", {}
            rows.append({"backend": label, "status": "fail" if detail else "pass", "detail": detail, **row,
                         "seconds": round(time.perf_counter() - t0, 2)})
    return rows


def run(backends=BACKENDS, epochs=3, with_bandwidth=True) -> dict:
    """The whole self-test as a JSON-ready dict; ``ok`` is False when anything disagreed."""
    import xpdnn
    from .kernels import check

    report = {"xpdnn": xpdnn.__version__, "python": platform.python_version(), "machine": platform.machine(),
              "kernel_check_mode": check.mode(), "backends": find_backends()}
    report["kernels"] = kernel_checks()
    report["training"] = training_runs(backends, epochs)
    report["bandwidth"] = bandwidth() if with_bandwidth else []
    report["first_use_checks"] = [vars(r) for r in check.results()]
    report["ok"] = not any(r.get("status") == "fail" for section in ("kernels", "training", "bandwidth")
                           for r in report[section]) and all(r.ok for r in check.results())
    return report


def format_report(report: dict) -> str:
    """A compact text rendering of :func:`run`'s report."""
    lines = [f"xpdnn {report['xpdnn']} selftest (Python {report['python']}, {report['machine']}; "
             f"first-use kernel check: {report['kernel_check_mode']})"]
    lines.append("backends: " + "; ".join(
        f"{b['name']} {b['version']}" + (f" ({b['note']})" if b["note"] else "") if b["usable"]
        else f"{b['name']}: {b['note'] or 'not usable'}" for b in report["backends"]))
    kernels = report["kernels"]
    skipped = [k for k in kernels if k["status"] == "skip"]
    if skipped and len(skipped) == len(kernels):
        lines.append(f"kernels: {len(kernels)} variants skipped ({skipped[0]['detail']})")
    else:
        passed = sum(k["status"] == "pass" for k in kernels)
        device = next((k.get("device") for k in kernels if k.get("device")), "?")
        lines.append(f"kernels: {passed}/{len(kernels)} variants agree with the portable path on {device}")
        lines += [f"  FAIL {k['kernel']} [{k['variant']}, {k['dtype']}]: {k['detail']}"
                  for k in kernels if k["status"] == "fail"]
    for r in report["training"]:
        if r["status"] == "skip":
            lines.append(f"digits {r['backend']}: skipped ({r['detail']})")
        elif r["status"] == "pass":
            what = "reference" if r["backend"] == "numpy" else "matches numpy"
            lines.append(f"digits {r['backend']}: {what}, loss {r['final_loss']:.4f}, "
                         f"val accuracy {r['final_val_accuracy']:.4f} ({r['seconds']:.1f} s)")
        else:
            lines.append(f"digits {r['backend']}: FAIL {r['detail']}")
    for b in report["bandwidth"]:
        if b["status"] == "skip":
            lines.append(f"bandwidth {b['kernel']}: skipped ({b['detail']})")
        else:
            lines.append(f"bandwidth {b['kernel']}: {b['GB/s']} GB/s ({b['shape']}, {b['device']})")
    for r in report["first_use_checks"]:
        if not r["ok"]:
            lines.append(f"first-use check FAILED: {r['kernel']} [{r['variant']}, {r['dtype']}] on "
                         f"{r['device']}: {r['detail']}")
    lines.append("selftest: " + ("PASS" if report["ok"] else "FAIL"))
    return "\n".join(lines)
