"""DenseNet architecture: the variant table, the building blocks and the builder."""

from keras_densenet.model.backend import require_standard_layers
from keras_densenet.model.backend import require_tf_keras
from keras_densenet.model.builder import DenseNet
from keras_densenet.model.builder import DenseNet121
from keras_densenet.model.builder import DenseNet161
from keras_densenet.model.builder import DenseNet169
from keras_densenet.model.builder import DenseNet201
from keras_densenet.model.builder import DenseNet264
from keras_densenet.model.builder import min_input_side
from keras_densenet.model.features import feature_extractor
from keras_densenet.model.features import stage_layer_names
from keras_densenet.model.features import stage_strides
from keras_densenet.model.features import transfer_weights
from keras_densenet.model.layers import custom_objects
from keras_densenet.model.preprocessing import preprocess_input
from keras_densenet.model.preprocessing import preprocessing_layers
from keras_densenet.model.specs import VARIANTS
from keras_densenet.model.specs import DenseNetSpec
from keras_densenet.model.specs import get_spec
from keras_densenet.model.summary import count_macs
from keras_densenet.model.summary import summarize
from keras_densenet.model.weights import fetch_imagenet_weights
from keras_densenet.model.weights import load_weights_by_name
from keras_densenet.model.weights import read_weight_file
