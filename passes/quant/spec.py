"""Quantizer specs: a short string per site, parsed and validated into a :class:`QuantSpec`.

Grammar: ``none`` or hyphen-separated tokens, the format first:

- format: ``int2`` … ``int8`` (uniform), ``fp8e4m3`` / ``fp8e5m2`` (fake fp8), ``post2`` … ``post8``
  (power-of-√2 levels, ASQ/POST), ``log2`` … ``log8`` (log2 levels) and ``logsqrt2`` … ``logsqrt8``
  (log√2 levels; the last two only for the softmax site);
- ``sym`` | ``asym`` (uniform only; default ``sym``);
- granularity ``tensor`` | ``channel`` | ``token`` | ``g<N>`` (groups of N along the last dimension);
  weights: ``channel`` = per output row, ``g<N>`` = per row and group of N inputs (``token`` is invalid);
  activations: ``tensor``/``channel`` are static (set by the observer), ``token``/``g<N>`` dynamic;
- learning mode ``rtn`` (no trained parameter) | ``lsq`` (learned step) | ``lwc`` (OmniQuant learnable
  clipping) | ``asq`` (LSQ step times a per-token adapter factor; activations, ``token``, sym or asym).

Examples: ``int4-asym-g128-lwc``, ``int8-sym-token``, ``int4-token-asq``, ``fp8e4m3-channel``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from surgeon.errors import RecipeError

FORMAT = re.compile(r"^(int|post|logsqrt|log)([2-8])$|^(fp8e4m3|fp8e5m2)$")
GRANULARITIES = ("tensor", "channel", "token")
MODES = ("rtn", "lsq", "lwc", "asq")


@dataclass(frozen=True)
class QuantSpec:
    """A parsed quantizer spec. ``fmt`` ∈ int|fp8e4m3|fp8e5m2|post|log2|logsqrt2; ``group`` 0 unless g<N>."""

    fmt: str
    bits: int
    symmetric: bool = True
    granularity: str = "tensor"
    group: int = 0
    mode: str = "rtn"

    @property
    def is_log(self) -> bool:
        """Whether this is a log2 / log√2 (softmax) quantizer."""
        return self.fmt in ("log2", "logsqrt2")

    def text(self) -> str:
        """The canonical spec string (parse(text()) == self)."""
        head = {"int": f"int{self.bits}", "post": f"post{self.bits}", "log2": f"log{self.bits}",
                "logsqrt2": f"logsqrt{self.bits}"}.get(self.fmt, self.fmt)
        gran = f"g{self.group}" if self.granularity == "group" else self.granularity
        parts = [head] + (["sym" if self.symmetric else "asym"] if self.fmt == "int" else [])
        return "-".join(parts + [gran, self.mode])


def parse(text: str, *, field: str, role: str) -> QuantSpec | None:
    """Parse ``text`` for site ``role`` (weight|input|output|softmax); RecipeError naming ``field``."""
    def bad(why: str) -> RecipeError:
        return RecipeError(f"option `{field}` of pass `fake_quant`: {why} (got {text!r})",
                           fix="Write a spec like 'int4-asym-g128-lwc' or 'none'; see surgeon.passes.quant.spec")

    if text.strip().lower() == "none":
        return None
    tokens = text.strip().lower().split("-")
    m = FORMAT.match(tokens[0])
    if not m:
        raise bad("the first token must be a format: int2..int8, fp8e4m3, fp8e5m2, post2..8, log2..8, logsqrt2..8")
    if m.group(3):
        fmt, bits = m.group(3), 8
    else:
        fmt, bits = {"int": "int", "post": "post", "log": "log2", "logsqrt": "logsqrt2"}[m.group(1)], int(m.group(2))
    values = {"symmetric": None, "granularity": None, "group": 0, "mode": None}
    for tok in tokens[1:]:
        if tok in ("sym", "asym"):
            key, value = "symmetric", tok == "sym"
        elif tok in GRANULARITIES or re.fullmatch(r"g\d+", tok):
            key, value = "granularity", tok if tok in GRANULARITIES else "group"
            if value == "group":
                values["group"] = int(tok[1:])
                if values["group"] < 2:
                    raise bad("a group size must be at least 2")
        elif tok in MODES:
            key, value = "mode", tok
        else:
            raise bad(f"unknown token `{tok}`")
        if values[key] is not None:
            raise bad(f"token `{tok}` repeats a {key} already given")
        values[key] = value
    default_gran = "channel" if role == "weight" else ("tensor" if fmt in ("log2", "logsqrt2") else "token")
    spec = QuantSpec(fmt, bits, True if values["symmetric"] is None else values["symmetric"],
                     values["granularity"] or default_gran, values["group"], values["mode"] or "rtn")
    _check(spec, role, bad)
    return spec


def _check(spec: QuantSpec, role: str, bad) -> None:
    if spec.fmt != "int" and not spec.symmetric:
        raise bad("`asym` applies only to int formats")
    if spec.is_log != (role == "softmax"):
        raise bad("log2/logsqrt2 formats are for the softmax site only, and the softmax site takes only them")
    if spec.is_log and (spec.granularity != "tensor" or spec.mode != "rtn"):
        raise bad("log quantizers are per tensor with an observed Δ (no granularity or learning mode)")
    if role == "weight" and spec.granularity == "token":
        raise bad("weights have no tokens; use tensor, channel or g<N>")
    if role == "weight" and spec.mode == "asq":
        raise bad("asq is an activation quantizer")
    if spec.mode == "asq" and (spec.granularity != "token" or spec.fmt != "int"):
        raise bad("asq needs an int format and token granularity")
    if spec.mode == "lsq" and role != "weight" and spec.granularity not in ("tensor", "channel"):
        raise bad("lsq on activations needs a static granularity (tensor or channel)")
    if spec.fmt != "int" and spec.mode in ("lsq", "asq"):
        raise bad(f"{spec.mode} applies to int formats")
