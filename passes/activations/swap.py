"""``swap_activation``: replace the activation inside matched MLPs (changes the function).

A site is an MLP (its path is the MLP's scope, e.g. ``model.layers.0.mlp``; BERT-style split MLPs are
sited at their block). An activation module is replaced in the tree; a functional activation
(``F.gelu(x)`` in the forward) is replaced in the scope's graph by a call of the new module, and the
rewritten graph is installed in place of the scope.
"""

from __future__ import annotations

from dataclasses import dataclass

from surgeon.errors import RecipeError
from surgeon.passes.activations.registry import activation_names, make_activation, unknown_activation_hint
from surgeon.patterns import mlp_sites
from surgeon.pipeline.config import PassConfig
from surgeon.pipeline.registry import Found, PassContext, PassHandler, Site, register_pass
from surgeon.rewrite import install_graph, instance_graph_module, set_submodule

NEW_ACTIVATION = "surgeon_activation"


@dataclass(frozen=True, kw_only=True)
class SwapActivation(PassConfig):
    """Options of ``swap_activation``: ``to``, the registered activation to put in (``gelu`` by default)."""

    pass_name = "swap_activation"
    to: str = "gelu"

    def check(self) -> None:
        """``to`` must name a registered activation."""
        if self.to not in activation_names():
            raise RecipeError(f"option `to` of pass `swap_activation` names unknown activation `{self.to}`",
                              fix=unknown_activation_hint(self.to))


@register_pass(SwapActivation)
class SwapActivationPass(PassHandler):
    """Replaces MLP activations with a registered activation."""

    preserves = "changes"
    paper = "(general); PolyCom (Zhuo et al., 2024) and CRReLU (EAFO, arXiv 2405.12954) activations"
    summary = "Replace the activation inside matched MLPs by a registered activation."
    site_kind = "MLP"

    def find(self, ctx: PassContext, config: SwapActivation) -> Found:
        return Found([Site(s.path, s.path, data=s) for s in mlp_sites(ctx.capture)])

    def rewrite(self, ctx: PassContext, config: SwapActivation, sites: list[Site]) -> bool:
        cap = ctx.capture
        for site in sites:
            mlp = site.data
            if mlp.act is not None:
                set_submodule(ctx.model, mlp.act, make_activation(config.to))
                site.record = {"module": mlp.act, "to": config.to}
            else:
                _swap_functional(cap, mlp.act_scope, mlp.act_node, config.to)
                site.record = {"graph": mlp.act_scope, "node": mlp.act_node, "to": config.to}
        return bool(sites)

    def replay(self, model, config, record) -> None:
        if "module" in record:
            set_submodule(model, record["module"], make_activation(record["to"]))
        else:
            raise NotImplementedError("replaying a functional activation swap needs a capture")


def _swap_functional(cap, scope_path: str, node_name: str, to: str) -> None:
    gm = instance_graph_module(cap, scope_path)
    node = next(n for n in gm.graph.nodes if n.name == node_name)
    gm.add_submodule(NEW_ACTIVATION, make_activation(to))
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(NEW_ACTIVATION, (node.args[0],))
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    install_graph(cap, scope_path, gm)
