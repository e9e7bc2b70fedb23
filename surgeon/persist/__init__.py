"""Saving and loading transformed models: safetensors + ``surgeon.json``, atomic, pickle-free."""

from surgeon.persist.atomic import is_surgeon_output
from surgeon.persist.reader import load, read_manifest
from surgeon.persist.writer import save
from surgeon.persist.verification import Verification, verify

__all__ = ["Verification", "is_surgeon_output", "load", "read_manifest", "save", "verify"]
