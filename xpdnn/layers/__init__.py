from .base import Layer, LAYERS, layer_from_config, layer_to_config
from .linear import Linear
from .activations import Identity, ReLU, Sigmoid, Tanh, Softmax
from .dropout import Dropout
from .sequential import Sequential, Summary
