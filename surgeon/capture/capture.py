"""``capture(model)``: every scope of a model, deduplicated, verified against eager, with a report."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

from surgeon.capture.calls import RecordedCall, record_calls
from surgeon.capture.identity import identity_key, shallow_key
from surgeon.capture.scopes import (
    CAPTURE_RTOL,
    Scope,
    bind_graph,
    block_ancestors,
    find_blocks,
    iter_module_paths,
    join,
    relative,
    same_signature,
    trace_scope,
    verify_scope,
)
from surgeon.runner import call_kwargs

if TYPE_CHECKING:
    from surgeon.capture.report import CaptureReport


@dataclass
class Capture:
    """The captured scopes of one model, and the calls they were traced from.

    ``scopes`` maps each scope's first instance path to the scope; ``scope_at(path)`` finds the scope of
    any instance. ``calls`` holds one recorded eager call per composite module.
    """

    model: nn.Module
    scopes: dict[str, Scope]
    calls: dict[str, RecordedCall]
    inputs: Mapping[str, Any] | torch.Tensor
    seconds: float = 0.0
    _by_instance: dict[str, Scope] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        for scope in self.scopes.values():
            for path in scope.instances:
                self._by_instance[path] = scope

    def scope_at(self, path: str) -> Scope | None:
        """The scope whose instances include module path ``path``."""
        return self._by_instance.get(path)

    def instance_paths(self) -> list[str]:
        """Every module path that is an instance of some scope."""
        return list(self._by_instance)

    def failures(self) -> list[tuple[str, str]]:
        """(path, reason) for every scope without a graph and every child traced as a fallback leaf."""
        out = []
        for scope in self.scopes.values():
            if scope.failure:
                out.append((scope.path, scope.failure))
            for child, reason in scope.fallbacks:
                out.append((join(scope.path, child), f"traced as a leaf: {reason}"))
        return out

    def report(self) -> "CaptureReport":
        """A summary of the capture: one row per scope, and every failure with its reason."""
        from surgeon.capture.report import CaptureReport

        return CaptureReport.of(self)


def capture(
    model: nn.Module,
    inputs: Mapping[str, Any] | torch.Tensor | None = None,
    *,
    verify: bool = True,
    previous: Capture | None = None,
) -> Capture:
    """Capture ``model`` into nested fx scopes (DESIGN.md §1).

    ``inputs`` is one batch of keyword arguments (or a tensor) to run the model on; by default
    :func:`surgeon.example_inputs`. Every scope is traced from the call it received on that batch, and,
    with ``verify``, checked to reproduce that call's eager output (relative error ≤ 1e-6, else the scope
    counts as failed). Identical modules (same class, shapes and configuration) share one graph.

    ``previous`` is an earlier capture of the same model (before a pass changed it): scopes whose
    structure and call signature did not change reuse its graphs instead of being traced again. Reused
    graphs are not re-verified, except the model scope's, whose leaves may have been replaced.
    """
    start = time.perf_counter()
    if inputs is None:
        from surgeon.inputs import example_inputs

        inputs = example_inputs(model)
    composite = list(iter_module_paths(model))
    if isinstance(inputs, torch.Tensor):
        run = lambda: model(inputs)  # noqa: E731
    else:
        kwargs = call_kwargs(model, inputs)
        run = lambda: model(**kwargs)  # noqa: E731
    was_training = model.training
    model.eval()
    try:
        calls = record_calls(composite, run)
        reusable = {}
        if previous is not None and previous.model is model:
            reusable = {s.key: s for s in previous.scopes.values() if s.ok and s.key is not None}
        scopes = _capture_scopes(model, calls, verify=verify, reusable=reusable)
    finally:
        model.train(was_training)
    return Capture(model, scopes, calls, inputs, seconds=time.perf_counter() - start)


def _capture_scopes(model: nn.Module, calls: dict[str, RecordedCall], *, verify: bool,
                    reusable: dict[Any, Scope]) -> dict[str, Scope]:
    blocks = find_blocks(model)
    by_key: dict[Any, Scope] = {}
    memo: dict[int, tuple] = {}
    scopes: dict[str, Scope] = {}
    queue: list[tuple[str, str]] = [("", "model")]
    queued = {""}
    while queue:
        path, kind = queue.pop(0)
        module = model.get_submodule(path)
        # The model scope's graph depends on the wrappers around the blocks, not on what its leaves hold.
        key = ("model", wrapper_key(model, blocks)) if kind == "model" else (kind, identity_key(module, memo))
        scope = by_key.get(key)
        if scope is not None:
            scope.instances.append(path)
        else:
            scope = _new_scope(module, path, kind, calls.get(path), blocks, verify, reusable.get(key))
            scope.key = key
            by_key[key] = scope
            scopes[path] = scope
        # Composite leaves become scopes of their own; identical instances reuse the first graph's leaves.
        for target in scope.leaf_targets():
            child_path = join(path, target)
            child = model.get_submodule(child_path)
            if child_path not in queued and next(child.children(), None) is not None:
                queued.add(child_path)
                queue.append((child_path, "module"))
    return scopes


def _rebind(graph_module, module: nn.Module):
    """``graph_module`` itself when it already calls exactly ``module``'s submodules, else a rebound copy."""
    for node in graph_module.graph.nodes:
        if node.op == "call_module":
            try:
                same = graph_module.get_submodule(node.target) is module.get_submodule(node.target)
            except AttributeError:
                same = False
            if not same:
                return bind_graph(graph_module, module)
    return graph_module


def wrapper_key(model: nn.Module, blocks: set[int]) -> tuple:
    """The model scope's structure: every wrapper module inlined in it (not the leaves' insides)."""
    wrappers = block_ancestors(model, blocks)
    return tuple((path, shallow_key(m)) for path, m in model.named_modules() if id(m) in wrappers)


def _new_scope(module, path, kind, call, blocks, verify, old: Scope | None = None) -> Scope:
    scope = Scope(path=path, instances=[path], module_class=type(module).__name__, kind=kind, call=call)
    if call is None:
        scope.failure = "not called when the model ran on the example inputs"
        return scope
    start = time.perf_counter()
    if old is not None and same_signature(old.call, call):
        gm, fallbacks, failure = _rebind(old.graph_module, module), list(old.fallbacks), None
        scope.reused = True
        # Same structure and call: the retrace would give the same graph, already verified. The model
        # scope is the exception: its leaves (blocks, norms, heads) may have been replaced.
        verify = verify and kind == "model"
    else:
        gm, fallbacks, failure = trace_scope(module, call, kind=kind, blocks=blocks)
    scope.fallbacks = fallbacks
    if gm is not None and verify:
        try:
            error = verify_scope(gm, call)
        except Exception as exc:  # noqa: BLE001 - a graph that cannot run is a failed capture
            gm, failure = None, f"graph does not run: {type(exc).__name__}: {str(exc)[:200]}"
        else:
            if not error <= CAPTURE_RTOL:
                gm, failure = None, f"graph output differs from eager (relative error {error:.2e})"
    scope.graph_module = gm
    scope.failure = failure
    scope.trace_seconds = time.perf_counter() - start
    return scope


__all__ = ["Capture", "capture", "relative"]
