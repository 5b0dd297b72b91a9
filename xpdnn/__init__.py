"""xpdnn: deep feed-forward networks on any Array API library (NumPy, CuPy, PyTorch, ...)."""

from .layers import (Layer, Linear, Identity, ReLU, Sigmoid, Tanh, Softmax, Dropout, Sequential, Summary,
                     BatchNorm1d, SyncBatchNorm, LayerNorm, WeightNormLinear, CosineLinear, DropConnect, GaussianNoise,
                     LeakyReLU, PReLU, RReLU, ELU, Softplus, GELU, SiLU, Maxout)
from .perceptron import Perceptron
from .losses import (Loss, SoftmaxCrossEntropy, BinaryCrossEntropy, MultiLabelLogistic, MSE, MeanSquaredError,
                     MAE, MeanAbsoluteError, L1Loss, Huber, HuberLoss, MulticlassHinge, SquaredMulticlassHinge,
                     MultilabelHinge, HierarchicalSoftmax)
from .optim import (Optimizer, SGD, Adagrad, RMSProp, Adam, AdamW, StepDecay, ExponentialDecay,
                    InverseTimeDecay, CosineWarmup, ReduceLROnPlateau)
from .regularizers import L1, L2, ElasticNet, MaxNorm, ClipGradNorm, ClipGradValue
from .trainer import Trainer, Callback, EarlyStopping, TrainingError
from .callbacks import ModelCheckpoint
from .ensemble import Bagging, mc_predict, AnnealedDropout
from .io import save, load, load_optimizer
from .io import ModelFileError
from .random import Stream
from . import init, random, datasets, ensemble, regularizers, preprocessing, diagnostics, distributed

__version__ = "0.1.0"


def summary(net, n_in=None):
    """Neurons and learnable parameters per layer of ``net``."""
    return net.summary(n_in)


def plot_history(history, path=None, **kwargs):
    """Learning curves of a training history (needs matplotlib); see :func:`xpdnn.plot.plot_history`."""
    from .plot import plot_history as plot
    return plot(history, path, **kwargs)


def export_onnx(net, path, **kwargs):
    """Write ``net`` as an ONNX model (needs onnx); see :func:`xpdnn.export.export_onnx`."""
    from .export import export_onnx as export
    return export(net, path, **kwargs)
