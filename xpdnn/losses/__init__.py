from .base import Loss, LOSSES, check_labels
from .cross_entropy import SoftmaxCrossEntropy, log_softmax
from .regression import MSE, MeanSquaredError, MAE, MeanAbsoluteError, L1Loss, Huber, HuberLoss
from .hinge import MulticlassHinge, SquaredMulticlassHinge, MultilabelHinge
from .hierarchical import HierarchicalSoftmax
from .binary import BinaryCrossEntropy, MultiLabelLogistic
