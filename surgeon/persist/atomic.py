"""Atomic output directories: write into a hidden temporary sibling, then rename into place.

An interrupted write leaves only the hidden temporary directory, never a partial output under the
requested name. Replacing an earlier output (``force``) renames it aside first, renames the new one in,
then deletes the old: at every moment the old or the new output is whole.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from surgeon.errors import SurgeonError

MANIFEST = "surgeon.json"


def is_surgeon_output(path: Path) -> bool:
    """True when ``path`` is a directory holding a surgeon manifest."""
    return path.is_dir() and (path / MANIFEST).is_file()


def check_destination(out: Path, *, force: bool) -> None:
    """Refuse to write over anything but an earlier surgeon output, and over that without ``force``."""
    if not out.exists():
        return
    if not out.is_dir():
        raise SurgeonError(f"{out} exists and is a file", fix="Choose another output directory")
    if not any(out.iterdir()):
        return
    if not is_surgeon_output(out):
        raise SurgeonError(f"{out} exists and is not a surgeon output; refusing to overwrite it",
                           fix="Choose another output directory, or empty this one yourself")
    if not force:
        raise SurgeonError(f"{out} already holds a surgeon output",
                           fix="Pass --force (force=True) to replace it, or choose another directory")


@contextlib.contextmanager
def atomic_directory(out: Path, *, force: bool) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``out`` atomically, on error it is removed."""
    out = Path(out)
    check_destination(out, force=force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        _fsync_dir(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rmdir(old)
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
        _fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
