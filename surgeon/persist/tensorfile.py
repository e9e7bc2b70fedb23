"""Writing safetensors files one tensor at a time, hashing as we go.

``safetensors.torch.save_file`` builds every tensor's bytes before writing, which doubles peak memory
for a large shard. This writer streams each tensor's raw bytes (a zero-copy ``uint8`` view of the
CPU tensor) straight to the file and computes the SHA-256 on the way. Reading uses safetensors'
``safe_open``, which memory-maps the file, so a load touches only the pages it uses.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Iterable

import torch

DTYPE_CODES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor occupies in a file."""
    return tensor.numel() * tensor.element_size()


def write_tensors(path: Path, tensors: Iterable[tuple[str, torch.Tensor]], metadata: dict[str, str] | None = None
                  ) -> str:
    """Write ``tensors`` (name, tensor) to ``path`` in safetensors format; return the file's SHA-256."""
    tensors = [(name, t.detach()) for name, t in tensors]
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, t in tensors:
        if t.dtype not in DTYPE_CODES:
            raise TypeError(f"cannot store {name}: dtype {t.dtype} has no safetensors code")
        size = tensor_bytes(t)
        header[name] = {"dtype": DTYPE_CODES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format wants the data to start 8-byte aligned
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for chunk in (struct.pack("<Q", len(raw)), raw):
            f.write(chunk)
            digest.update(chunk)
        for _, t in tensors:
            data = t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
            f.write(data)
            digest.update(data)
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    """SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
