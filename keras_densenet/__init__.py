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
from keras_densenet.model import count_macs
from keras_densenet.model import custom_objects
from keras_densenet.model import feature_extractor
from keras_densenet.model import fetch_imagenet_weights
from keras_densenet.model import load_weights_by_name
from keras_densenet.model import min_input_side
from keras_densenet.model import preprocess_input
from keras_densenet.model import preprocessing_layers
from keras_densenet.model import read_weight_file
from keras_densenet.model import require_standard_layers
from keras_densenet.model import require_tf_keras
from keras_densenet.model import stage_layer_names
from keras_densenet.model import stage_strides
from keras_densenet.model import summarize
from keras_densenet.model import transfer_weights

__version__ = "0.1.0"
