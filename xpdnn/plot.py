"""Learning curves of a training history with matplotlib (the optional ``plot`` extra:
``pip install 'xpdnn[plot]'``), imported only when a plot is asked for.

Saving to a file goes through matplotlib's object-oriented API (a ``Figure`` with its own Agg
canvas, as matplotlib's "Embedding in a web application server" example does), so a script
or notebook's pyplot backend and current figure are left alone; without a path the figure is
made with ``pyplot.subplots`` so that a notebook shows it.  The file is written to a temporary
file in the same folder and renamed over the target, so a failed write leaves no partial file.
"""

from __future__ import annotations

import math
import os

_PANELS = (("loss", "loss"), ("accuracy", "accuracy"))


def _matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'xpdnn[plot]'") from None
    return matplotlib


def check_plot_path(path) -> str:
    """The lower-case format of ``path`` (its extension, e.g. ``"png"``) if matplotlib is
    installed and writes it; else ImportError or ValueError saying what to do."""
    _matplotlib()
    from matplotlib.backend_bases import FigureCanvasBase

    ext = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
    formats = FigureCanvasBase.get_supported_filetypes()
    if ext not in formats:
        raise ValueError(f"cannot tell the image format of {os.fspath(path)!r}: give a name ending in one of "
                         f"{', '.join('.' + f for f in sorted(formats))}")
    return ext


def _series(history, key):
    """(epochs, values) of ``history[key]``: 1-based epochs, epochs without a number left out."""
    points = [(i + 1, float(v)) for i, v in enumerate(history.get(key) or [])
              if v is not None and not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)]
    return [p[0] for p in points], [p[1] for p in points]


def plot_history(history, path=None, *, title: str | None = None):
    """Plot training curves: one panel for ``loss`` (and ``val_loss``), one for ``accuracy``
    (and ``val_accuracy``) when the history has it, against the epoch (1-based).

    ``history``: the dict ``Trainer.fit`` returns (``{"loss": [...], ...}``), or anything with
    such a ``history`` attribute (a ``Trainer``).  ``path`` (``"curves.png"``, ``.pdf``,
    ``.svg``, ... any format matplotlib writes) saves the figure there atomically; without it
    the figure is made with pyplot (shown by a notebook).  Returns the matplotlib ``Figure``.
    Raises ImportError without matplotlib, ValueError for a history with no loss values or a
    path whose format matplotlib does not write (before anything is written)."""
    history = getattr(history, "history", history)
    if not isinstance(history, dict):
        raise TypeError(f"history must be the dict Trainer.fit returns (or a Trainer), got {type(history).__name__}")
    fmt = check_plot_path(path) if path is not None else None
    _matplotlib()
    from matplotlib.ticker import MaxNLocator

    panels = [(key, label) for key, label in _PANELS if _series(history, key)[0] or _series(history, "val_" + key)[0]]
    if not panels or panels[0][0] != "loss":
        raise ValueError("the history has no loss values to plot (train first: history = trainer.fit(...))")
    if path is None:
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    else:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        fig = Figure(figsize=(5 * len(panels), 3.6))
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        for name, style in ((key, "-"), ("val_" + key, "--")):
            epochs, values = _series(history, name)
            if epochs:
                ax.plot(epochs, values, style, marker="o" if len(epochs) < 30 else None, markersize=3,
                        label="validation" if name.startswith("val_") else "training")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        _save(fig, os.fspath(path), fmt)
    return fig


def _save(fig, path, fmt):
    from .datasets.files import atomic_output

    with atomic_output(path) as f:
        fig.savefig(f, format=fmt, dpi=120)
