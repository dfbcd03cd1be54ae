"""keras-densenet: DenseNet for Keras, from training on one device to int8 LiteRT models."""

from keras_densenet.model import VARIANTS
from keras_densenet.model import DenseNet
from keras_densenet.model import DenseNet121
from keras_densenet.model import DenseNet161
from keras_densenet.model import DenseNet169
from keras_densenet.model import DenseNet201
from keras_densenet.model import DenseNet264
from keras_densenet.model import DenseNetSpec
from keras_densenet.model import get_spec
from keras_densenet.model import min_input_side

__version__ = "0.1.0"
