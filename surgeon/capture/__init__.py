"""Capture: models into nested torch.fx scopes (see :func:`capture`)."""

from surgeon.capture.calls import RecordedCall, record_calls
from surgeon.capture.capture import Capture, capture
from surgeon.capture.report import CaptureReport
from surgeon.capture.scopes import Scope, compare_outputs, join, relative, relative_error

__all__ = [
    "Capture",
    "CaptureReport",
    "RecordedCall",
    "Scope",
    "capture",
    "compare_outputs",
    "join",
    "record_calls",
    "relative",
    "relative_error",
]
