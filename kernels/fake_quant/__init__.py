"""Group-wise integer fake quantisation: ``surgeon::fake_quant`` (static scales, STE and LSQ gradients)
and ``surgeon::fake_quant_dynamic`` (symmetric scales computed per group on the fly)."""

from .reference import fake_quant_dynamic_reference, fake_quant_reference

__all__ = ["fake_quant_dynamic_reference", "fake_quant_reference"]
