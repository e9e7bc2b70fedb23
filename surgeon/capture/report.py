"""The capture report: every scope with its node count and instances, and every failure with its reason."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScopeRow:
    """One scope in the report."""

    path: str
    module_class: str
    kind: str
    instances: int
    nodes: int
    failure: str | None


@dataclass(frozen=True)
class CaptureReport:
    """What capture did: rows per scope and (path, reason) failures."""

    rows: tuple[ScopeRow, ...]
    failures: tuple[tuple[str, str], ...]
    seconds: float

    @classmethod
    def of(cls, cap) -> "CaptureReport":
        """Build the report of a :class:`~surgeon.capture.capture.Capture`."""
        rows = tuple(
            ScopeRow(s.path or "<model>", s.module_class, s.kind, len(s.instances), s.node_count(), s.failure)
            for s in cap.scopes.values()
        )
        return cls(rows, tuple(cap.failures()), cap.seconds)

    def text(self) -> str:
        """A plain-text table of the report."""
        lines = [f"{'scope':<40} {'class':<28} {'inst':>4} {'nodes':>5}  status"]
        for r in self.rows:
            status = "ok" if r.failure is None else f"FAILED: {r.failure}"
            lines.append(f"{r.path:<40} {r.module_class:<28} {r.instances:>4} {r.nodes:>5}  {status}")
        if self.failures:
            lines.append("failures and fallbacks:")
            lines += [f"  {path}: {reason}" for path, reason in self.failures]
        lines.append(f"captured in {self.seconds * 1000:.1f} ms")
        return "\n".join(lines)
