from .digits import load_digits, train_test_split
from .toy import xor, spirals
from .files import (DEFAULT_MAX_BYTES, DataFileError, DataFileTooLarge, load_mnist, load_mnist_dir, load_npz,
                    save_npz, load_csv, read_idx)
from .streaming import BatchStream
