"""B-spline basis expansion for KAN layers (Cox–de Boor in one pass): ``surgeon::bspline_basis``."""

from .reference import bspline_basis_backward_reference, bspline_basis_reference

__all__ = ["bspline_basis_backward_reference", "bspline_basis_reference"]
