"""Built-in patterns: the MLP family, norm → Linear(s), and the attention softmax.

MLPs (each a pattern; a site's ``path`` is the scope the MLP was found in, e.g. ``model.layers.0.mlp``):
- ``plain``: ``fc1 → act → fc2`` (Linear or GPT-2 Conv1D, with or without bias, optional dropout);
- ``gated``: ``down(act(gate(x)) * up(x))``;
- ``split``: BERT/ViT's pair of modules, ``intermediate`` (dense → act) feeding ``output`` (dense → …),
  matched in the block scope by looking into the two child scopes.
Norm → Linear sites come from :func:`norm_sites`, which follows the norm's output into leaves with the
data-flow probe. Softmax sites come from graphs where attention was captured, else from the probe.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import _pytree as pytree

from surgeon.analysis.dataflow import calls_inside, readers_of
from surgeon.capture import Capture, join
from surgeon.patterns.core import MatchContext, Pattern, anything, either, find, function, method, module
from surgeon.patterns.structure import is_activation, is_linear, norm_info

ACTIVATION_FUNCTIONS = (F.gelu, F.silu, F.relu, F.mish, F.tanh, F.sigmoid, F.elu, F.leaky_relu, F.softplus,
                        torch.relu, torch.tanh, torch.sigmoid)
ACTIVATION_METHODS = ("relu", "sigmoid", "tanh")


def linear(**kw):
    """A call of a Linear-like module (``nn.Linear``, GPT-2's ``Conv1D``, anything computing x W + b)."""
    return module(is_linear, label="linear", **kw)


def activation(**kw):
    """An activation: an elementwise parameterless module, or a known activation function/method."""
    return either(module(is_activation, label="act_module", **kw),
                  function(*ACTIVATION_FUNCTIONS, label="act_fn"), method(*ACTIVATION_METHODS, label="act_method"))


def norm(**kw):
    """A call of a norm module (RMS or layer norm, recognised by what it computes)."""
    return module(lambda m: norm_info(m) is not None, label="norm", **kw)


def multiply():
    """An elementwise product (``a * b``, ``torch.mul``, ``a.mul(b)``)."""
    return either(function(operator.mul, torch.mul), method("mul"))


def dropout():
    """A dropout module (identity at inference)."""
    return module((nn.Dropout,), label="dropout")


def plain_mlp(*, with_dropout: bool) -> Pattern:
    """``fc1 → act → [dropout →] fc2``: the hidden activation has no other user."""
    nodes = {"fc1": linear(), "act": activation(), "fc2": linear()}
    edges = [("fc1", "act")]
    if with_dropout:
        nodes["drop"] = dropout()
        edges += [("act", "drop"), ("drop", "fc2")]
    else:
        edges += [("act", "fc2")]
    closed = ("fc1", "act", "drop") if with_dropout else ("fc1", "act")
    return Pattern("plain_mlp", nodes, tuple(edges), closed=closed)


GATED_MLP = Pattern(
    "gated_mlp",
    {"x": anything(), "gate": linear(), "up": linear(), "act": activation(), "mul": multiply(), "down": linear()},
    (("x", "gate"), ("x", "up"), ("gate", "act"), ("act", "mul"), ("up", "mul"), ("mul", "down")),
    closed=("gate", "up", "act", "mul"),
)

# The halves of a split MLP, each in its own child scope.
INTERMEDIATE_HALF = Pattern("intermediate_half", {"fc1": linear(), "act": activation()}, (("fc1", "act"),),
                            closed=("fc1",))
OUTPUT_HALF = Pattern("output_half", {"x": anything(op="placeholder"), "fc2": linear()}, (("x", "fc2"),))

# One norm → Linear edge per match (a norm feeding q, k and v gives three matches); ``norm_sites``
# adds what a pattern cannot say: that *every* reader is Linear-like, looking into leaves.
NORM_TO_LINEAR = Pattern("norm_to_linear", {"norm": norm(), "linear": linear()}, (("norm", "linear"),))

SOFTMAX = either(function(F.softmax, torch.softmax, label="softmax"), method("softmax"))


@dataclass(frozen=True)
class MlpSite:
    """An MLP found in a model. Paths are full module paths; ``act`` is None for a functional activation.

    ``kind`` is ``plain``, ``gated`` or ``split``; ``up`` is the first Linear (fc1), ``gate`` exists for
    gated MLPs, ``down`` is the last (fc2). ``act_node`` names the activation node in the scope graph.
    """

    path: str
    kind: str
    up: str
    down: str
    act: str | None
    act_node: str
    gate: str | None = None
    act_scope: str = ""  # instance path of the scope whose graph holds ``act_node``


def mlp_sites(cap: Capture) -> list[MlpSite]:
    """Every MLP of the captured model, one site per module instance."""
    sites: list[MlpSite] = []
    for scope in cap.scopes.values():
        if not scope.ok:
            continue
        ctx = MatchContext(cap.model.get_submodule(scope.path), scope.path, cap)
        claimed: set = set()
        local: list[tuple[str, dict, str]] = []  # (kind, relative paths incl. act scope, act node)
        for kind, pattern in (("gated", GATED_MLP), ("plain", plain_mlp(with_dropout=True)),
                              ("plain", plain_mlp(with_dropout=False))):
            for m in find(pattern, scope.graph, ctx):
                core = {m.nodes[n] for n in m.nodes if n != "x"}
                if core & claimed:
                    continue
                claimed |= core
                act = m.nodes["act"]
                rel = {"up": m.target("up" if kind == "gated" else "fc1"),
                       "down": m.target("down" if kind == "gated" else "fc2"),
                       "gate": m.target("gate") if kind == "gated" else None,
                       "act": act.target if act.op == "call_module" else None, "act_scope": ""}
                local.append((kind, rel, act.name))
        local += _split_mlps(cap, scope, ctx)
        for instance in scope.instances:
            for kind, rel, act_node in local:
                full = {k: (join(instance, v) if v is not None else None) for k, v in rel.items()}
                sites.append(MlpSite(instance, kind, full["up"], full["down"], full["act"], act_node,
                                     full["gate"], act_scope=full["act_scope"]))
    return sites


def _split_mlps(cap: Capture, scope, ctx: MatchContext) -> list[tuple[str, dict, str]]:
    """BERT/ViT: a leaf whose scope is ``dense → act`` feeding a leaf whose input goes to a Linear."""
    found = []
    for node in scope.graph.nodes:
        if node.op != "call_module":
            continue
        first = cap.scope_at(join(scope.path, node.target))
        if first is None or not first.ok:
            continue
        halves = find(INTERMEDIATE_HALF, first.graph, MatchContext(cap.model.get_submodule(first.path)))
        if not halves or halves[0].nodes["act"].users.keys() != {_output(first.graph)}:
            continue
        for user in node.users:
            second = cap.scope_at(join(scope.path, user.target)) if user.op == "call_module" else None
            if second is None or not second.ok or user.args[:1] != (node,):
                continue
            ends = find(OUTPUT_HALF, second.graph, MatchContext(cap.model.get_submodule(second.path)))
            first_input = next(n for n in second.graph.nodes if n.op == "placeholder")
            if not any(e.nodes["x"] is first_input for e in ends):
                continue
            end = next(e for e in ends if e.nodes["x"] is first_input)
            act = halves[0].nodes["act"]
            rel = {"up": f"{node.target}.{halves[0].target('fc1')}", "down": f"{user.target}.{end.target('fc2')}",
                   "gate": None, "act": f"{node.target}.{act.target}" if act.op == "call_module" else None,
                   "act_scope": node.target}
            found.append(("split", rel, act.name))
    return found


def _output(graph):
    return next(n for n in graph.nodes if n.op == "output")


# ---------------------------------------------------------------------------------------------- norms


@dataclass(frozen=True)
class NormSite:
    """A norm whose output only Linear-like modules read. Paths are full module paths."""

    path: str
    scope: str
    readers: tuple[str, ...]


def norm_sites(cap: Capture) -> tuple[list[NormSite], list[tuple[str, str]]]:
    """Norms whose every reader is Linear-like, and (path, reason) for the norms that are not."""
    sites: list[NormSite] = []
    skipped: list[tuple[str, str]] = []
    for scope in cap.scopes.values():
        if not scope.ok:
            continue
        root = cap.model.get_submodule(scope.path)
        for node in scope.graph.nodes:
            if node.op != "call_module" or norm_info(root.get_submodule(node.target)) is None:
                continue
            readers, reason = _linear_readers(cap, scope, root, node)
            for instance in scope.instances:
                path = join(instance, node.target)
                if reason is None:
                    sites.append(NormSite(path, instance, tuple(join(instance, r) for r in readers)))
                else:
                    skipped.append((path, reason))
    return sites, skipped


def _linear_readers(cap: Capture, scope, root: nn.Module, node) -> tuple[list[str], str | None]:
    """Relative paths of the Linear-like readers of ``node``'s output, or a reason it has others."""
    readers: list[str] = []
    for user in _through_channel_preserving(node):
        if user.op == "output":
            where = "the model's output" if scope.kind == "model" else f"the output of {scope.module_class}"
            return [], f"its output is {where} (the residual stream keeps its values), not only Linear inputs"
        if user.op != "call_module":
            return [], f"its output feeds `{_describe(user)}`, not a Linear"
        target = root.get_submodule(user.target)
        if is_linear(target):
            readers.append(user.target)
            continue
        if next(target.children(), None) is None:
            return [], f"its output feeds {user.target} ({type(target).__name__}), not a Linear"
        call = cap.calls.get(join(scope.path, user.target))
        tensor = _argument_value(user, node, call)
        if tensor is None:
            return [], f"its output feeds {user.target}, which was not observed on the example inputs"
        inner = readers_of(target, user.target, call.args, call.kwargs, tensor)
        bad = [r for r in inner if not r.linear]
        if bad:
            return [], f"inside {user.target}, `{bad[0].op}` in {bad[0].path} reads it, not a Linear"
        readers += [r.path for r in inner]
    if not readers:
        return [], "its output is not read"
    return list(dict.fromkeys(readers)), None


def _through_channel_preserving(node) -> list:
    """The users of ``node``, looking through ops that keep the channel (last) dimension whole:
    token indexing such as ``h[:, -k:, :]`` and dropout modules."""
    users = []
    for user in node.users:
        if _keeps_channels(user):
            users += _through_channel_preserving(user)
        else:
            users.append(user)
    return users


_RESHAPES = ("view", "reshape", "contiguous")


def _keeps_channels(node) -> bool:
    if node.op == "call_module" and node.graph.owning_module is not None:
        return isinstance(node.graph.owning_module.get_submodule(node.target), nn.Dropout)
    if (node.op == "call_method" and node.target in _RESHAPES) or (
        node.op == "call_function" and node.target in (torch.reshape,)
    ):
        return _same_channels(node.args[0], node)
    if node.op != "call_function" or node.target is not operator.getitem:
        return False
    meta = node.args[0].meta.get("tensor_meta") if hasattr(node.args[0], "meta") else None
    index = node.args[1]
    if meta is None or not hasattr(meta, "shape"):
        return False
    ndim = len(meta.shape)
    if isinstance(index, tuple):
        plain = all(isinstance(i, (int, slice)) for i in index)
        return plain and len(index) == ndim and index[-1] == slice(None, None, None)
    return isinstance(index, (int, slice)) and ndim >= 2


def _same_channels(before, after) -> bool:
    """True when a reshape keeps the last dimension whole (only leading dimensions regroup)."""
    a = getattr(before, "meta", {}).get("tensor_meta")
    b = after.meta.get("tensor_meta")
    if not hasattr(a, "shape") or not hasattr(b, "shape") or not a.shape or not b.shape:
        return False
    return a.shape[-1] == b.shape[-1]


def _describe(node) -> str:
    target = getattr(node.target, "__name__", node.target)
    return f"{node.op} {target}"


def _argument_value(user, node, call):
    """The value the recorded ``call`` passed where ``user`` takes ``node`` as an argument."""
    if call is None:
        return None
    node_paths = pytree.tree_flatten_with_path((user.args, user.kwargs))[0]
    call_values = dict(pytree.tree_flatten_with_path((call.args, call.kwargs))[0])
    for path, leaf in node_paths:
        if leaf is node:
            value = call_values.get(path)
            return value if isinstance(value, torch.Tensor) else None
    return None


# --------------------------------------------------------------------------------------------- softmax


@dataclass(frozen=True)
class SoftmaxSite:
    """A softmax call: the module path that calls it and, when the module was captured, its graph node."""

    path: str
    node: str | None


def _is_softmax(func) -> bool:
    return getattr(func, "__name__", "") in ("softmax", "_softmax")


def softmax_sites(cap: Capture) -> list[SoftmaxSite]:
    """Softmax calls: graph nodes where the caller was captured, else found by running the leaf."""
    sites: list[SoftmaxSite] = []
    for scope in cap.scopes.values():
        if scope.ok:
            ctx = MatchContext(cap.model.get_submodule(scope.path), scope.path, cap)
            nodes = [n.name for n in scope.graph.nodes if SOFTMAX.accepts(n, ctx)]
            sites += [SoftmaxSite(inst, name) for inst in scope.instances for name in nodes]
        elif scope.call is not None:
            module_ = cap.model.get_submodule(scope.path)
            calls = calls_inside(module_, scope.path, scope.call.args, scope.call.kwargs, _is_softmax)
            for instance in scope.instances:
                sites += [SoftmaxSite(instance + path[len(scope.path):], None) for path, _ in calls]
    return sites
