"""CaseOptimizer: several optimizers over disjoint parameter sets that act as one.

The canonical BNN set-up trains the binary kernels with Bop and everything else (batch norm,
biases, real-valued first/last layers) with Adam. ``CaseOptimizer`` makes the pair look like one
``torch.optim.Optimizer`` to the training loop, LR schedulers, ``torch.amp.GradScaler`` and
checkpoint code: ``param_groups`` is the live union of the sub-optimizers' groups (the same dicts,
so a scheduler on the case optimizer drives every group, and a scheduler on one sub-optimizer
drives only that one), ``state_dict`` nests the sub-optimizers' state dicts, ``step`` evaluates the
closure once and steps each sub-optimizer.

Two ways to build one (Larq's ``CaseOptimizer`` semantics, PyTorch style):

    CaseOptimizer(Bop(binary_parameters(model)), Adam(real_parameters(model)))
    CaseOptimizer((is_binary, lambda ps: Bop(ps)), default=lambda ps: Adam(ps), params=model.parameters())

In the second form every parameter goes to the optimizer whose predicate claims it, or to the
default. Errors (ValueError): a parameter claimed twice, an optimizer that gets no parameter, a
parameter (of ``params``) claimed by none when there is no default.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable

import torch
from torch.optim import Optimizer

__all__ = ["CaseOptimizer"]


def _describe(p: torch.Tensor, names: dict[int, str]) -> str:
    return repr(names[id(p)]) if id(p) in names else f"of shape {tuple(p.shape)}"


class CaseOptimizer(Optimizer):
    """Route disjoint parameter sets to sub-optimizers and behave as one optimizer."""

    def __init__(
        self,
        *optimizers: Optimizer | tuple[Callable[[torch.Tensor], bool], Callable[[list], Optimizer]],
        default: Optimizer | Callable[[list], Optimizer] | None = None,
        params: Iterable[torch.Tensor] | Iterable[tuple[str, torch.Tensor]] | None = None,
    ):
        names: dict[int, str] = {}
        all_params = None
        if params is not None:
            all_params = []
            for item in params:
                if isinstance(item, tuple):
                    names[id(item[1])] = item[0]
                    item = item[1]
                all_params.append(item)
        pairs = [o for o in optimizers if not isinstance(o, Optimizer)]
        if pairs:
            optimizers = self._route(optimizers, default, all_params, names)
        else:
            optimizers = list(optimizers)
            if default is not None:
                if not isinstance(default, Optimizer):
                    raise TypeError(
                        f"default={default!r} must be an Optimizer when no (predicate, factory) pairs are given"
                    )
                optimizers.append(default)
        if not optimizers:
            raise ValueError("CaseOptimizer needs at least one optimizer, got none")
        for opt in optimizers:
            if isinstance(opt, CaseOptimizer):
                raise TypeError("a CaseOptimizer cannot contain another CaseOptimizer")
            if not isinstance(opt, Optimizer):
                raise TypeError(f"{opt!r} is not a torch.optim.Optimizer nor a (predicate, factory) pair")
        self.optimizers: list[Optimizer] = list(optimizers)
        owner: dict[int, int] = {}
        for i, opt in enumerate(self.optimizers):
            for group in opt.param_groups:
                for p in group["params"]:
                    if id(p) in owner and owner[id(p)] != i:
                        raise ValueError(
                            f"parameter {_describe(p, names)} is claimed by optimizer #{owner[id(p)]} "
                            f"({type(self.optimizers[owner[id(p)]]).__name__}) and optimizer #{i} "
                            f"({type(opt).__name__}); each parameter must go to exactly one"
                        )
                    owner[id(p)] = i
        if all_params is not None:
            for p in all_params:
                if id(p) not in owner:
                    raise ValueError(
                        f"parameter {_describe(p, names)} is claimed by no optimizer and there is "
                        "no default optimizer; pass default=... or claim it"
                    )
        # What torch.optim.Optimizer.__init__ sets up, minus param groups of our own.
        self.defaults = {}
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()

    @staticmethod
    def _route(items, default, all_params, names):
        for item in items:
            pair = isinstance(item, tuple) and len(item) == 2 and all(map(callable, item))
            if not (pair or isinstance(item, Optimizer)):
                raise TypeError(f"{item!r} is not a torch.optim.Optimizer nor a (predicate, factory) pair of callables")
        if any(isinstance(item, Optimizer) for item in items):
            raise TypeError("give either optimizers or (predicate, factory) pairs, not both")
        if all_params is None:
            raise ValueError("(predicate, factory) pairs need params=model.parameters() to route")
        buckets: list[list[torch.Tensor]] = [[] for _ in items]
        rest: list[torch.Tensor] = []
        for p in all_params:
            claims = [i for i, (predicate, _) in enumerate(items) if predicate(p)]
            if len(claims) > 1:
                raise ValueError(
                    f"parameter {_describe(p, names)} is claimed by predicates #{claims}; "
                    "each parameter must go to exactly one"
                )
            (buckets[claims[0]] if claims else rest).append(p)
        optimizers = []
        for i, ((_, factory), ps) in enumerate(zip(items, buckets)):
            if not ps:
                raise ValueError(f"optimizer #{i} receives no parameters: its predicate claims none")
            optimizers.append(factory(ps))
        if rest:
            if default is None:
                raise ValueError(
                    f"parameter {_describe(rest[0], names)} is claimed by no predicate and there is "
                    "no default optimizer; pass default=..."
                )
            optimizers.append(default if isinstance(default, Optimizer) else default(rest))
        return optimizers

    @property
    def param_groups(self) -> list[dict]:
        """The sub-optimizers' param groups, in order (the same dict objects)."""
        return [g for opt in self.optimizers for g in opt.param_groups]

    @property
    def state(self) -> dict:
        """Per-parameter state of every sub-optimizer, merged (parameters are disjoint)."""
        merged = {}
        for opt in self.optimizers:
            merged.update(opt.state)
        return merged

    def __getstate__(self):
        return {"optimizers": self.optimizers, "defaults": self.defaults}

    def __setstate__(self, state):
        self.__dict__.update(state)

    def __repr__(self) -> str:
        inner = "\n".join("  " + repr(o).replace("\n", "\n  ") for o in self.optimizers)
        return f"CaseOptimizer(\n{inner}\n)"

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Evaluate ``closure`` once (with grad), then step every sub-optimizer."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        """``{"optimizers": [each sub-optimizer's state_dict]}``."""
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get("optimizers")
        if saved is None or len(saved) != len(self.optimizers):
            got = "no 'optimizers' key" if saved is None else f"{len(saved)} optimizers"
            raise ValueError(f"state_dict has {got}; this CaseOptimizer has {len(self.optimizers)} optimizers")
        for opt, sd in zip(self.optimizers, saved):
            opt.load_state_dict(sd)

    def add_param_group(self, param_group: dict) -> None:
        raise NotImplementedError("add the group to one of CaseOptimizer.optimizers instead")
