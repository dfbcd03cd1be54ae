"""Quantization-aware training, TFLite conversion and LiteRT evaluation for keras-densenet models."""
