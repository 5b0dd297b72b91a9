"""Loss protocol: ``loss, dlogits = loss_fn(logits, targets, check=True)``.

``loss`` is a 0-d array on the logits' device (reading it is the caller's choice: one host
sync); ``dlogits`` has the logits' shape and already includes the reduction's scale.
``check_targets(y, n_outputs)`` validates a whole target array once, before training; the
trainer then calls ``loss_fn(logits, targets, check=False)`` so a label loss skips its per-call
range check (a host read-back).  A loss with parameters (``HierarchicalSoftmax``) also takes
``sink=``, the step's gradient sink (see :mod:`xpdnn.step`).
"""

from __future__ import annotations

from .. import _backend as B

LOSSES: dict[str, type] = {}


class Loss:
    classification = False   # True when targets are class labels and accuracy is meaningful
    head: str | None = None    # how the outputs it trains are read (see xpdnn.heads)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        LOSSES[cls.__name__] = cls

    def __call__(self, logits, targets, *, check: bool = True):
        raise NotImplementedError

    def check_targets(self, y, n_outputs: int | None):
        return y

    def mean_denominator(self, targets):
        """What this loss's reduction divides the sum of its terms by, for ``targets``: None when
        it is proportional to the number of rows (a plain mean, the default), ``1`` for a plain
        sum (the int), or a 0-d array (a weighted mean).  Data-parallel training uses it to combine the
        ranks' shards exactly: each rank's share of the global loss is its sum divided by the
        denominator summed over the ranks."""
        return 1 if getattr(self, "reduction", "mean") == "sum" else None

    def get_config(self) -> dict:
        return {}


def check_labels(y, n_classes: int | None, *, ignore_index: int | None = None, what="y"):
    """Class labels y: (N,) in ``[0, n_classes)`` (``ignore_index`` allowed too), returned as int64.

    Integer dtypes are taken as they are.  Floating labels are accepted when every value is a
    whole number (``0.0, 1.0, ...``, as a CSV column or a pandas float column holds them) and
    converted to int64; a NaN, an infinity or a fractional value is an error, never a class."""
    xp = B.namespace(y)
    if y.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array of class labels, got shape {tuple(y.shape)}")
    if xp.isdtype(y.dtype, "real floating"):
        if not bool(xp.all(xp.isfinite(y))):
            raise ValueError(f"{what} contains NaN or Inf; class labels must be integers")
        if not bool(xp.all(y == xp.round(y))):
            raise ValueError(f"{what} contains non-integer values; class labels must be integers")
        if y.shape[0] and float(xp.max(xp.abs(y))) >= 2.0 ** 53:
            raise ValueError(f"{what} contains a label too large to be a class index")
    elif not xp.isdtype(y.dtype, "integral"):
        raise TypeError(f"{what} must hold integer class labels, got dtype {B.dtype_name(y.dtype)}")
    y = xp.astype(y, xp.int64)
    if y.shape[0] == 0:
        return y
    valid = y if ignore_index is None else y[y != ignore_index]
    if valid.shape[0] == 0:
        return y
    lo, hi = int(xp.min(valid)), int(xp.max(valid))
    if lo < 0:
        raise ValueError(f"{what} contains negative class label {lo}")
    if n_classes is not None and hi >= n_classes:
        raise ValueError(f"{what} contains class label {hi} but the model has only {n_classes} outputs "
                         f"(labels must be in [0, {n_classes - 1}])")
    return y
