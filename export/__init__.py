"""Quantization-aware training, TFLite conversion in every LiteRT format, LiteRT evaluation and
compatibility reports for keras-densenet models."""

from keras_densenet.export.compatibility import inspect
from keras_densenet.export.compatibility import write_report
from keras_densenet.export.convert import FORMAT_ALIASES
from keras_densenet.export.convert import INTEGER_TYPES
from keras_densenet.export.convert import IO_TYPES
from keras_densenet.export.convert import QUANTIZATION_TYPES
from keras_densenet.export.convert import TARGETS
from keras_densenet.export.convert import canonical_format
from keras_densenet.export.convert import check_options
from keras_densenet.export.convert import convert
from keras_densenet.export.convert import is_qat_model
from keras_densenet.export.convert import strip_tensor_names
from keras_densenet.export.litert import evaluate
from keras_densenet.export.litert import float_compute_ops
from keras_densenet.export.litert import load_interpreter
from keras_densenet.export.litert import measure_latency
from keras_densenet.export.litert import predict
from keras_densenet.export.litert import predict_pixels
from keras_densenet.export.prepare import bake_normalization
from keras_densenet.export.prepare import float32_copy
from keras_densenet.export.quantize import BatchNormShift
from keras_densenet.export.quantize import SameScaleQuantizeConfig
from keras_densenet.export.quantize import FoldedConv2D
from keras_densenet.export.quantize import KernelQuantizeConfig
from keras_densenet.export.quantize import load_qat_model
from keras_densenet.export.quantize import prepare_for_qat
from keras_densenet.export.quantize import quantize_model
from keras_densenet.export.quantize import quantize_scope
from keras_densenet.export.quantize import save_qat_model
from keras_densenet.export.sidecar import read_sidecar
from keras_densenet.export.sidecar import write_sidecar
