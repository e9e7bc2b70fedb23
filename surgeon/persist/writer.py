"""``surgeon.save``: weights as (sharded) safetensors, a versioned manifest and a readable report."""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from surgeon.errors import SurgeonError
from surgeon.persist.atomic import MANIFEST, atomic_directory
from surgeon.persist.source import describe_source
from surgeon.persist.tensorfile import tensor_bytes, write_tensors
from surgeon.pipeline.manager import report
from surgeon.rewrite import CapturedModule

FORMAT = "surgeon"
FORMAT_VERSION = 1
DEFAULT_SHARD_BYTES = 2 * 1024**3
INDEX = "model.safetensors.index.json"


def collect_tensors(model: nn.Module) -> tuple[list[tuple[str, torch.Tensor]], dict[str, str], list[str]]:
    """(unique tensors in model order, alias → canonical name for tied ones, non-persistent buffer names)."""
    seen: dict[int, str] = {}
    unique: list[tuple[str, torch.Tensor]] = []
    aliases: dict[str, str] = {}
    persistent = set(model.state_dict(keep_vars=True))
    nonpersistent = []
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    for name, tensor in named:
        if id(tensor) in seen:
            aliases[name] = seen[id(tensor)]
            continue
        seen[id(tensor)] = name
        unique.append((name, tensor))
        if name not in persistent and not isinstance(tensor, nn.Parameter):
            nonpersistent.append(name)
    return unique, aliases, nonpersistent


def plan_shards(tensors: list[tuple[str, torch.Tensor]], shard_bytes: int) -> list[list[tuple[str, torch.Tensor]]]:
    """Split tensors, in order, into shards of at most ``shard_bytes`` (a larger tensor gets its own)."""
    shards: list[list[tuple[str, torch.Tensor]]] = [[]]
    size = 0
    for name, t in tensors:
        nbytes = tensor_bytes(t)
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, t))
        size += nbytes
    return shards


def _versions() -> dict[str, str]:
    import safetensors
    import transformers

    import surgeon

    return {"surgeon": surgeon.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "safetensors": safetensors.__version__, "python": platform.python_version()}


def save(model: nn.Module, out: str | Path, *, force: bool = False, shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Save ``model`` (and the passes applied to it) to directory ``out``; returns the path.

    Writes ``model.safetensors`` (or ``model-0000k-of-0000n.safetensors`` shards with an index above
    ``shard_bytes``), ``surgeon.json`` and ``report.md`` atomically. ``out`` may not exist, be empty, or
    hold an earlier surgeon output (replaced only with ``force``); anything else is refused.
    """
    out = Path(out)
    if any(isinstance(m, CapturedModule) for m in model.modules()):
        raise SurgeonError("the model contains a rewritten graph (a functional rewrite), which cannot be saved yet",
                           where=str(out), fix="Use passes that replace modules, or keep the model in memory")
    if any(t.device.type == "meta" for _, t in [*model.named_parameters(), *model.named_buffers()]):
        raise SurgeonError("the model has parameters on the meta device (no data)", where=str(out),
                           fix="Materialise the model before saving it")
    tensors, aliases, nonpersistent = collect_tensors(model)
    shards = plan_shards(tensors, shard_bytes)
    history = report(model)
    with atomic_directory(out, force=force) as tmp:
        shard_entries = []
        for i, shard in enumerate(shards):
            name = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            digest = write_tensors(tmp / name, shard, metadata={"format": "pt"})
            shard_entries.append({"file": name, "sha256": digest, "bytes": (tmp / name).stat().st_size,
                                  "tensors": [n for n, _ in shard]})
        if len(shards) > 1:
            weight_map = {n: e["file"] for e in shard_entries for n in e["tensors"]}
            (tmp / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "source": describe_source(model),
            "recipe": {"passes": [r.config for r in history]},
            "reports": [r.as_dict() for r in history],
            "versions": _versions(),
            "tensors": {"aliases": aliases, "nonpersistent_buffers": nonpersistent},
            "shards": shard_entries,
        }
        (tmp / "report.md").write_text(render_report(manifest))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=_jsonable))
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in a manifest")


def render_report(manifest: dict[str, Any]) -> str:
    """A human-readable summary of a manifest (the saved ``report.md``)."""
    src = manifest["source"]
    lines = ["# surgeon output", "", f"- created: {manifest['created']}",
             f"- source: {src.get('class')} ({json.dumps(src.get('origin'))})",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in manifest["versions"].items()),
             f"- shards: {len(manifest['shards'])}", "", "## Passes", ""]
    if not manifest["reports"]:
        lines.append("No passes were applied.")
    else:
        lines.append("| step | pass | preserves | matched | skipped | params before → after | model rel. error | cosine |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for r in manifest["reports"]:
            model = next((c for c in r["certificates"] if c["scope"] == "<model>"), None)
            err = f"{model['relative_error']:.2e}" if model else "—"
            cos = f"{model['cosine']:.6f}" if model else "—"
            lines.append(f"| {r['step']} | {r['pass']} | {r['preserves']} | {len(r['matched'])} | {len(r['skipped'])} |"
                         f" {r['params_before']:,} → {r['params_after']:,} | {err} | {cos} |")
        for r in manifest["reports"]:
            for path, reason in r["skipped"]:
                lines.append(f"- step {r['step']} skipped `{path}`: {reason}")
    return "\n".join(lines) + "\n"
