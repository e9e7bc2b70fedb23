"""Per-pass reports: sites matched and skipped, parameters, time, certification."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from surgeon.pipeline.certify import Certificate


@dataclass
class PassReport:
    """What one recipe step did."""

    step: int
    name: str
    target: str
    preserves: str
    matched: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    outside_target: int = 0
    params_before: int = 0
    params_after: int = 0
    seconds: float = 0.0
    changed: bool = False
    certificates: list[Certificate] = field(default_factory=list)
    records: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def worst_error(self) -> float:
        """The largest relative error over the certificates (0 with none)."""
        return max((c.relative_error for c in self.certificates), default=0.0)

    @property
    def model_certificate(self) -> Certificate | None:
        """The certificate of the model's outputs."""
        return next((c for c in self.certificates if c.scope == "<model>"), None)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for manifests and JSON output."""
        return {
            "step": self.step, "pass": self.name, "target": self.target, "preserves": self.preserves,
            "matched": self.matched, "skipped": [list(s) for s in self.skipped],
            "outside_target": self.outside_target, "params_before": self.params_before,
            "params_after": self.params_after, "seconds": self.seconds, "changed": self.changed,
            "certificates": [c.as_dict() for c in self.certificates], "records": self.records,
            "notes": self.notes, "config": self.config,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PassReport":
        """Rebuild a report from :meth:`as_dict` output (as stored in a manifest)."""
        rep = cls(data["step"], data["pass"], data["target"], data["preserves"])
        rep.matched = list(data["matched"])
        rep.skipped = [tuple(s) for s in data["skipped"]]
        for key in ("outside_target", "params_before", "params_after", "seconds", "changed", "records", "notes",
                    "config"):
            setattr(rep, key, data[key])
        rep.certificates = [Certificate(**c) for c in data["certificates"]]
        return rep

    def text(self) -> str:
        """A few readable lines."""
        model = self.model_certificate
        cert = (f"model rel.err {model.relative_error:.2e}, cos {model.cosine:.6f}, SQNR {model.sqnr_db:.1f} dB"
                if model else "not certified")
        lines = [f"[{self.step}] {self.name} ({self.preserves}) target={self.target!r}: "
                 f"{len(self.matched)} matched, {len(self.skipped)} skipped; params {self.params_before:,} -> "
                 f"{self.params_after:,}; {self.seconds * 1000:.0f} ms; {cert}"]
        lines += [f"    skipped {path}: {reason}" for path, reason in self.skipped]
        lines += [f"    note: {n}" for n in self.notes]
        return "\n".join(lines)
