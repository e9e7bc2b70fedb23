"""Quantization passes: ``fake_quant`` (insert quantizers), ``calibrate_quant`` (observers already ran;
block-wise reconstruction) ``pack_quant`` (store int weights as packed codes) and
``repquant_fold`` (fold per-channel LayerNorm-output quantizers into the norm and its readers)."""

from surgeon.passes.quant.calibrate import CalibrateQuant, CalibrateQuantPass
from surgeon.passes.quant.fake_quant import FakeQuant, FakeQuantPass
from surgeon.passes.quant.pack import PackQuant, PackQuantPass
from surgeon.passes.quant.layers import PackedLinear, QuantLinear, SoftmaxQuant
from surgeon.passes.quant.quantizers import Quantizer
from surgeon.passes.quant.repquant_fold import RepQuantFold, RepQuantFoldPass
from surgeon.passes.quant.spec import QuantSpec, parse

__all__ = ["CalibrateQuant", "CalibrateQuantPass", "FakeQuant", "FakeQuantPass", "PackQuant", "PackQuantPass", "PackedLinear", "QuantLinear", "RepQuantFold", "RepQuantFoldPass", "SoftmaxQuant", "Quantizer",
           "QuantSpec", "parse"]
