"""Uniform quantization shared by every model family (trees now, LoRA layers later)."""

from .quantizer import QuantizationRangeWarning, UniformQuantizer, dynamic_quantize

__all__ = ["QuantizationRangeWarning", "UniformQuantizer", "dynamic_quantize"]
