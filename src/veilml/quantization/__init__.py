"""Uniform quantization shared by every model family: trees and remotely computed linear layers."""

from veilml.quantization.linear import QuantizedWeight, backward_input, backward_output, forward_output, quantize_rows
from veilml.quantization.quantizer import (
    QuantizationRangeWarning,
    RangeWarningScope,
    UniformQuantizer,
    dynamic_quantize,
    one_range_warning,
)

__all__ = [
    "QuantizationRangeWarning",
    "QuantizedWeight",
    "RangeWarningScope",
    "UniformQuantizer",
    "backward_input",
    "backward_output",
    "dynamic_quantize",
    "forward_output",
    "one_range_warning",
    "quantize_rows",
]
