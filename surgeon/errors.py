"""User-facing errors.

Every mistake a user can make (a bad recipe, an unknown model, a step that matches nothing, a failed
certification, a corrupt file) raises :class:`SurgeonError`. Its message is one paragraph that says
what went wrong, where, and how to fix it; the CLI prints it and exits with code 2, without a traceback.
Anything else that escapes is a bug in surgeon.
"""

from __future__ import annotations


class SurgeonError(Exception):
    """A mistake in the user's input, reported as one paragraph: what, where, how to fix."""

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None):
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self.paragraph())

    def paragraph(self) -> str:
        """The whole message as one paragraph."""
        parts = [f"{self.where}: {self.what}" if self.where else self.what]
        if self.fix:
            parts.append(self.fix)
        return " ".join(p.rstrip(".") + "." for p in parts)


class CaptureError(SurgeonError):
    """A module could not be captured into an fx graph."""


class RecipeError(SurgeonError):
    """A recipe (YAML, JSON or Python) is malformed: unknown pass, unknown key, wrong type."""


class MatchError(SurgeonError):
    """A recipe step matched no site, or fewer sites than its ``expect``."""


class CertificationError(SurgeonError):
    """A pass broke the numerical guarantee it declared."""
