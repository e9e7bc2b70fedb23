"""Certification: what a pass did to the numbers, per scope and on the model's outputs.

Before a pass runs, the manager records, on one sample batch, the model's outputs and the call (inputs
and output) of every scope the pass will touch. After it, each scope runs again on its recorded inputs
and the model on the batch; both are compared. ``exact`` passes must stay within 1e-5 relative error in
fp32; ``approx`` and ``changes`` passes get the same table as information.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn
from torch.utils import _pytree as pytree

from surgeon.capture import record_calls
from surgeon.runner import output_tensors, run_model

EXACT_RTOL = 1e-5


@dataclass(frozen=True)
class Certificate:
    """Errors of one scope (or the model, ``<model>``) after a pass, against before it."""

    scope: str
    relative_error: float
    cosine: float
    sqnr_db: float

    def as_dict(self) -> dict[str, Any]:
        """Plain data for reports and manifests."""
        return {"scope": self.scope, "relative_error": self.relative_error, "cosine": self.cosine,
                "sqnr_db": self.sqnr_db}


def _flat_float(tensors: list[torch.Tensor]) -> torch.Tensor:
    parts = [t.detach().double().flatten() for t in tensors if t.is_floating_point()]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def certificate(scope: str, before: Any, after: Any) -> Certificate:
    """Relative error, cosine and SQNR (dB) between two outputs of the same structure."""
    b = _flat_float([t for t in pytree.tree_leaves(before) if isinstance(t, torch.Tensor)])
    a = _flat_float([t for t in pytree.tree_leaves(after) if isinstance(t, torch.Tensor)])
    if a.shape != b.shape:
        return Certificate(scope, math.inf, math.nan, -math.inf)
    noise = (a - b).norm()
    signal = b.norm()
    rel = float(noise / signal) if signal > 0 else (0.0 if noise == 0 else math.inf)
    denom = float(a.norm() * signal)
    cos = float(torch.dot(a, b) / denom) if denom > 0 else (1.0 if noise == 0 else 0.0)
    sqnr = math.inf if noise == 0 else float(20 * torch.log10(signal / noise)) if signal > 0 else -math.inf
    return Certificate(scope, rel, cos, sqnr)


class Snapshot:
    """The outputs of the model and of some scopes on one batch, taken before a pass."""

    def __init__(self, model: nn.Module, batch: Mapping[str, Any] | torch.Tensor, scopes: list[str]):
        self.batch = batch
        self.scopes = [s for s in dict.fromkeys(scopes) if s]
        modules = [(p, model.get_submodule(p)) for p in self.scopes]
        holder = {}
        self.calls = record_calls(modules, lambda: holder.setdefault("out", run_model(model, batch)))
        self.model_output = output_tensors(holder["out"])

    def compare(self, model: nn.Module) -> list[Certificate]:
        """Certificates for each recorded scope and for the model, against ``model`` now."""
        certs = []
        with torch.no_grad():
            for path in self.scopes:
                call = self.calls.get(path)
                if call is None:
                    continue
                after = model.get_submodule(path)(*call.args, **call.kwargs)
                certs.append(certificate(path, call.output, after))
            after_model = output_tensors(run_model(model, self.batch))
        certs.append(certificate("<model>", list(self.model_output.values()), list(after_model.values())))
        return certs
