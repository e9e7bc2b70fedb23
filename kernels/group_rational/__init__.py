"""Group-rational activation (KAT's GR-KAN): ``surgeon::group_rational``."""

from .reference import group_rational_reference

__all__ = ["group_rational_reference"]
