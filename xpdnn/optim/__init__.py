from .base import Optimizer, OPTIMIZERS, optimizer_from_state
from .sgd import SGD
