"""Built-in tiny models: transformers configs with seeded random weights.

Every zoo model is small (hidden 64, 2 layers, 4 heads, vocab 256) so that tests and examples run in
milliseconds on a CPU, and needs no hub access. After construction *every* parameter is re-drawn from a
seeded generator, norm scales and biases included: transformers initialises norms to 1 (or 0 where the
scale is applied as ``1 + w``) and biases to 0, which would let a wrong norm fold or bias rewrite pass its
tests unnoticed.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import Callable, Literal, Mapping

import torch
import transformers as tf
from torch import nn
from transformers import PretrainedConfig

from surgeon.errors import SurgeonError

Kind = Literal["causal-lm", "encoder", "vision"]

DEFAULT_NUM_LAYERS = 2

# Shared by the decoder-only text models. Special token ids are pinned inside the tiny vocabulary:
# several configs default to ids of their real tokenizer (32000, 50256), which transformers 5 warns about
# and which would make `padding_idx` point outside the embedding.
_TEXT = dict(
    hidden_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=256,
    max_position_embeddings=128,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


@dataclass(frozen=True)
class ZooEntry:
    """One built-in model: how to make its config, which class to build, and what inputs it takes."""

    name: str
    family: str
    build_config: Callable[[int | None], PretrainedConfig]
    model_class: type[nn.Module]
    kind: Kind


def _make_config(
    config_class: type[PretrainedConfig], fields: dict, layers_key: str, num_layers: int | None
) -> PretrainedConfig:
    n = DEFAULT_NUM_LAYERS if num_layers is None else num_layers
    if n < 1:
        raise SurgeonError(
            f"num_layers must be at least 1, got {n}",
            where="surgeon.zoo",
            fix="Pass num_layers=None for the default of 2, or a positive integer",
        )
    # Number of layers goes to the constructor (not set afterwards) so derived fields such as Gemma 2's
    # `layer_types` are built for the right depth.
    config = config_class(**fields, **{layers_key: n})
    # Eager attention: the plain matmul-softmax path, deterministic on CPU and the one capture expects.
    config._attn_implementation = "eager"
    return config


def _entry(
    name: str,
    family: str,
    config_class: type[PretrainedConfig],
    model_class: type[nn.Module],
    kind: Kind,
    layers_key: str = "num_hidden_layers",
    **fields,
) -> ZooEntry:
    build = partial(_make_config, config_class, fields, layers_key)
    return ZooEntry(name, family, build, model_class, kind)


_ENTRIES = [
    _entry("tiny-llama", "llama", tf.LlamaConfig, tf.LlamaForCausalLM, "causal-lm", **_TEXT),
    _entry("tiny-qwen2", "qwen2", tf.Qwen2Config, tf.Qwen2ForCausalLM, "causal-lm", **_TEXT),
    _entry("tiny-mistral", "mistral", tf.MistralConfig, tf.MistralForCausalLM, "causal-lm", **_TEXT),
    _entry(
        "tiny-gpt2", "gpt2", tf.GPT2Config, tf.GPT2LMHeadModel, "causal-lm", layers_key="n_layer",
        n_embd=64, n_head=4, n_inner=128, vocab_size=256, n_positions=128, bos_token_id=1, eos_token_id=2,
    ),
    _entry(
        "tiny-bert", "bert", tf.BertConfig, tf.BertModel, "encoder",
        hidden_size=64, num_attention_heads=4, intermediate_size=128, vocab_size=256,
        max_position_embeddings=128, pad_token_id=0,
    ),
    _entry(
        "tiny-vit", "vit", tf.ViTConfig, tf.ViTModel, "vision",
        hidden_size=64, num_attention_heads=4, intermediate_size=128, image_size=32, patch_size=8,
        num_channels=3,
    ),
    _entry(
        "tiny-mixtral", "mixtral", tf.MixtralConfig, tf.MixtralForCausalLM, "causal-lm",
        **_TEXT, num_local_experts=4, num_experts_per_tok=2,
    ),
    # Gemma: RMSNorm scale applied as (1 + w), embeddings scaled by sqrt(hidden), tied lm_head.
    _entry("tiny-gemma", "gemma", tf.GemmaConfig, tf.GemmaForCausalLM, "causal-lm", **_TEXT, head_dim=16),
    # Gemma 2: extra pre/post feed-forward norms, alternating sliding/full attention, logit soft-capping.
    _entry(
        "tiny-gemma2", "gemma2", tf.Gemma2Config, tf.Gemma2ForCausalLM, "causal-lm",
        **_TEXT, head_dim=16, query_pre_attn_scalar=16,
    ),
    # Phi-3: fused qkv_proj and gate_up_proj.
    _entry("tiny-phi3", "phi3", tf.Phi3Config, tf.Phi3ForCausalLM, "causal-lm", **_TEXT),
    # Qwen 3: per-head q/k RMSNorm inside attention.
    _entry("tiny-qwen3", "qwen3", tf.Qwen3Config, tf.Qwen3ForCausalLM, "causal-lm", **_TEXT, head_dim=16),
    _entry(
        "tiny-qwen3-moe", "qwen3_moe", tf.Qwen3MoeConfig, tf.Qwen3MoeForCausalLM, "causal-lm",
        **_TEXT, head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
    ),
    # OLMo 2: norms *after* attention and MLP (post-norm inside the residual branch), q/k norms.
    _entry("tiny-olmo2", "olmo2", tf.Olmo2Config, tf.Olmo2ForCausalLM, "causal-lm", **_TEXT),
    # OPT: LayerNorm with bias, ReLU MLP (fc1/fc2), learned positions with an offset of 2, tied lm_head.
    _entry(
        "tiny-opt", "opt", tf.OPTConfig, tf.OPTForCausalLM, "causal-lm",
        hidden_size=64, num_attention_heads=4, ffn_dim=128, word_embed_proj_dim=64, vocab_size=256,
        max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    ),
]

ZOO: Mapping[str, ZooEntry] = MappingProxyType({e.name: e for e in _ENTRIES})
"""The built-in models by name (read-only)."""


def zoo_names() -> list[str]:
    """Names of the built-in models, in definition order."""
    return list(ZOO)


def get_entry(name: str) -> ZooEntry:
    """The zoo entry for ``name``; a :class:`SurgeonError` with the closest names if there is none."""
    try:
        return ZOO[name]
    except KeyError:
        pass
    close = difflib.get_close_matches(name, list(ZOO), n=1, cutoff=0.4)
    hint = f"Did you mean '{close[0]}'? " if close else ""
    raise SurgeonError(
        f"unknown zoo model '{name}'",
        where="surgeon.zoo",
        fix=f"{hint}Valid names: {', '.join(ZOO)}",
    )


def _param_seed(seed: int, name: str) -> int:
    # One stream per parameter *name*: a parameter's values do not depend on which other parameters
    # exist, so layer 0 of a 2-layer and of a 3-layer build are identical.
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@torch.no_grad()
def randomise_parameters(module: nn.Module, *, seed: int = 0, std: float = 0.02) -> None:
    """Re-draw every parameter of ``module`` in place from a generator seeded by ``seed``.

    Matrices (and any tensor of rank >= 2) become N(0, std). Rank-1 tensors are perturbed around their
    stored value, so the model keeps its intended operating point: a 1-D ``weight`` (a norm scale; for
    Gemma's ``1 + w`` norms the stored 0) gets ``+ 0.1 * N(0, 1)``, anything else (biases)
    ``+ std * N(0, 1)``.
    Values are drawn in float32 on the CPU and then cast, so a bf16 build equals the cast of the fp32 one.
    Tied parameters are one ``Parameter`` object and are written once, in place, so they stay tied.
    """
    gen = torch.Generator(device="cpu")
    for name, param in module.named_parameters():  # de-duplicates tied parameters
        gen.manual_seed(_param_seed(seed, name))
        noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
        if param.dim() >= 2:
            new = noise * std
        elif name.rsplit(".", 1)[-1] == "weight":
            new = param.detach().float().cpu() + 0.1 * noise
        else:
            new = param.detach().float().cpu() + std * noise
        param.copy_(new)


def build_zoo_model(
    name: str, *, num_layers: int | None = None, seed: int = 0, dtype: torch.dtype = torch.float32
) -> nn.Module:
    """Build the zoo model ``name`` with seeded random weights, in eval mode.

    Same ``name``, ``num_layers``, ``seed`` and ``dtype`` give bit-identical weights. The caller's global
    RNG state is left untouched. Provenance is recorded as ``model.surgeon_source``.
    """
    entry = get_entry(name)
    config = entry.build_config(num_layers)
    # transformers' own init draws from the global RNG; fork it so building a model has no side effects.
    with torch.random.fork_rng(devices=[]):
        # `_from_config` (what AutoModel.from_config calls) builds under `dtype` the way from_pretrained does,
        # keeping buffers such as RoPE's inv_freq in float32 where the modelling code asks for it.
        model = entry.model_class._from_config(config, dtype=dtype, attn_implementation="eager")
    randomise_parameters(model, seed=seed)
    model.eval()
    model.surgeon_source = {"zoo": name, "num_layers": config_num_layers(model.config), "seed": seed}
    return model


def config_num_layers(config: PretrainedConfig) -> int | None:
    """The number of transformer layers a config declares, whatever the field is called."""
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None
