"""DenseNet architecture: the variant table, the building blocks and the builder."""

from keras_densenet.model.builder import DenseNet
from keras_densenet.model.builder import DenseNet121
from keras_densenet.model.builder import DenseNet161
from keras_densenet.model.builder import DenseNet169
from keras_densenet.model.builder import DenseNet201
from keras_densenet.model.builder import DenseNet264
from keras_densenet.model.builder import min_input_side
from keras_densenet.model.specs import VARIANTS
from keras_densenet.model.specs import DenseNetSpec
from keras_densenet.model.specs import get_spec
