"""Data: the embedded sklearn_digits / digits_detection TFDS datasets and tf.data pipelines."""

# input_pipeline first: importing it hides GPUs/TPUs from TensorFlow before
# anything else in this package can initialise the TF runtime.
from swin_jax.data.input_pipeline import DatasetNotFoundError
from swin_jax.data.input_pipeline import get_num_examples
from swin_jax.data.input_pipeline import make_eval_iterator
from swin_jax.data.input_pipeline import make_train_iterator
from swin_jax.data.input_pipeline import SplitNotFoundError
from swin_jax.data.digits import prepare_embedded
from swin_jax.data.digits import SklearnDigits
from swin_jax.data.digits_detection import DigitsDetection
from swin_jax.data.digits_detection import prepare_embedded_detection

__all__ = [
    'DatasetNotFoundError',
    'DigitsDetection',
    'SplitNotFoundError',
    'SklearnDigits',
    'get_num_examples',
    'make_eval_iterator',
    'make_train_iterator',
    'prepare_embedded',
    'prepare_embedded_detection',
]
