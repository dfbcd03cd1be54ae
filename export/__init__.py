"""Quantization-aware training, TFLite conversion and LiteRT evaluation for keras-densenet models."""

from keras_densenet.export.convert import QUANTIZATION_TYPES
from keras_densenet.export.convert import convert
from keras_densenet.export.convert import is_qat_model
from keras_densenet.export.litert import evaluate
from keras_densenet.export.litert import float_compute_ops
from keras_densenet.export.litert import load_interpreter
from keras_densenet.export.litert import predict
from keras_densenet.export.quantize import SameScaleQuantizeConfig
from keras_densenet.export.quantize import load_qat_model
from keras_densenet.export.quantize import prepare_for_qat
from keras_densenet.export.quantize import quantize_model
from keras_densenet.export.quantize import quantize_scope
from keras_densenet.export.quantize import save_qat_model
