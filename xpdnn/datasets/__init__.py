from .digits import load_digits, train_test_split
