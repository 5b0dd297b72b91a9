from .base import Loss, LOSSES, check_labels
from .cross_entropy import SoftmaxCrossEntropy, log_softmax
from .regression import MSE, MeanSquaredError
