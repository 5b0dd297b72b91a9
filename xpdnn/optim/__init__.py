from .base import Optimizer, OPTIMIZERS, optimizer_from_state
from .sgd import SGD
from .adaptive import Adagrad, RMSProp, RMSprop, Adam, AdamW
from .schedules import (Schedule, StepDecay, ExponentialDecay, InverseTimeDecay, CosineWarmup,
                        ReduceLROnPlateau)
