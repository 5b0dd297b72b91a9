from .base import Layer, LAYERS, layer_from_config, layer_to_config
from .linear import Linear
from .activations import Identity, ReLU, Sigmoid, Tanh, Softmax
from .dropout import Dropout
from .sequential import Sequential, Summary
from .normalization import BatchNorm1d, LayerNorm, SyncBatchNorm
from .reparam import WeightNormLinear, CosineLinear
from .dropconnect import DropConnect
from .noise import GaussianNoise
from .rectifiers import LeakyReLU, PReLU, RReLU, ELU
from .smooth import Softplus, GELU, SiLU
from .maxout import Maxout
