"""``surgeon.load``: rebuild the base on ``meta``, replay the recipe's structure, assign the weights.

Nothing is unpickled and no calibration data is needed: each pass replays the structural part of what
it did (a weightless norm here, an untied head there) from its saved records, then the weights are
read from the safetensors shards (memory-mapped) after their SHA-256 matched the manifest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from surgeon.errors import SurgeonError
from surgeon.persist.atomic import MANIFEST
from surgeon.persist.writer import FORMAT, FORMAT_VERSION
from surgeon.persist.source import rebuild_base
from surgeon.persist.tensorfile import file_sha256
from surgeon.pipeline.manager import HISTORY_ATTR
from surgeon.pipeline.recipe import Recipe
from surgeon.pipeline.registry import handler_for
from surgeon.pipeline.report import PassReport


def read_manifest(directory: Path) -> dict[str, Any]:
    """The parsed, format-checked manifest of a surgeon output directory."""
    path = directory / MANIFEST
    if not directory.is_dir():
        raise SurgeonError(f"{directory} is not a directory", fix="Pass a directory written by surgeon.save")
    if not path.is_file():
        raise SurgeonError(f"{directory} has no {MANIFEST}, so it is not a surgeon output",
                           fix="Pass a directory written by surgeon.save or `surgeon apply --out`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SurgeonError(f"cannot parse the manifest: {exc}", where=str(path),
                           fix="The file is damaged; save the model again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SurgeonError("not a surgeon manifest", where=str(path), fix="Save the model again with surgeon")
    if manifest.get("version", 0) > FORMAT_VERSION:
        raise SurgeonError(f"manifest version {manifest.get('version')} is newer than this surgeon reads "
                           f"({FORMAT_VERSION})", where=str(path), fix="Upgrade surgeon")
    return manifest


def verify_hashes(directory: Path, manifest: dict[str, Any]) -> None:
    """Check every shard exists and matches its recorded SHA-256."""
    for shard in manifest["shards"]:
        path = directory / shard["file"]
        if not path.is_file():
            raise SurgeonError(f"weight file {shard['file']} is missing", where=str(directory),
                               fix="The output is incomplete; save the model again")
        if file_sha256(path) != shard["sha256"]:
            raise SurgeonError("weight file does not match the hash in the manifest (changed or damaged)",
                               where=str(path), fix="Save the model again; do not edit the weight files")


def replay(model: nn.Module, manifest: dict[str, Any], where: str) -> None:
    """Re-apply each pass's structural changes from the manifest's records."""
    for report in manifest["reports"]:
        config = Recipe.from_dict({"passes": [report["config"]]}, source=where).steps[0]
        handler = handler_for(config)
        for record in report["records"]:
            handler.replay(model, config, record)


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_path, _, attr = name.rpartition(".")
    return (model.get_submodule(module_path) if module_path else model), attr


def assign_tensors(model: nn.Module, directory: Path, manifest: dict[str, Any]) -> None:
    """Read every shard and put its tensors into ``model`` (shapes checked), then restore tied aliases."""
    for shard in manifest["shards"]:
        path = directory / shard["file"]
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    _assign(model, name, f.get_tensor(name), path)
        except SurgeonError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged header or truncated data
            raise SurgeonError(f"cannot read weights: {exc}", where=str(path),
                               fix="The file is damaged; save the model again") from None
    for alias, canonical in manifest["tensors"]["aliases"].items():
        module, attr = _owner(model, alias)
        source_module, source_attr = _owner(model, canonical)
        value = getattr(source_module, source_attr)
        if isinstance(value, nn.Parameter):
            module._parameters[attr] = value
        else:
            module._buffers[attr] = value
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if left:
        raise SurgeonError(f"the weight files lack {len(left)} tensors the model needs, e.g. {left[0]}",
                           where=str(directory), fix="The output is incomplete; save the model again")


def _assign(model: nn.Module, name: str, tensor: torch.Tensor, path: Path) -> None:
    try:
        module, attr = _owner(model, name)
    except AttributeError:
        raise SurgeonError(f"tensor {name} has no place in the rebuilt model", where=str(path),
                           fix="The weights do not belong to this manifest; save the model again") from None
    if attr in module._parameters:
        old = module._parameters[attr]
        if old is not None and tuple(old.shape) != tuple(tensor.shape):
            raise SurgeonError(f"tensor {name} has shape {tuple(tensor.shape)} but the model expects "
                               f"{tuple(old.shape)}", where=str(path), fix="The weights do not match; save again")
        module._parameters[attr] = nn.Parameter(tensor, requires_grad=old.requires_grad if old is not None else True)
    elif attr in module._buffers or name in module.state_dict():
        old = module._buffers.get(attr)
        if old is not None and tuple(old.shape) != tuple(tensor.shape):
            raise SurgeonError(f"buffer {name} has shape {tuple(tensor.shape)} but the model expects "
                               f"{tuple(old.shape)}", where=str(path), fix="The weights do not match; save again")
        module._buffers[attr] = tensor
    else:
        raise SurgeonError(f"tensor {name} has no place in the rebuilt model", where=str(path),
                           fix="The weights do not belong to this manifest; save the model again")


def load(directory: str | Path, *, base: nn.Module | None = None) -> nn.Module:
    """Load a surgeon output: verify hashes, rebuild, replay the passes' structure, assign weights.

    ``base`` is needed only for models that are not transformers models (a fresh instance of the class).
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    verify_hashes(directory, manifest)
    where = str(directory / MANIFEST)
    model = rebuild_base(manifest["source"], base, where=where)
    replay(model, manifest, where)
    assign_tensors(model, directory, manifest)
    model.eval()
    setattr(model, HISTORY_ATTR, [PassReport.from_dict(r) for r in manifest["reports"]])
    model.surgeon_source = manifest["source"].get("origin")
    model.surgeon_manifest = manifest
    return model
