r"""Bop, the latent-free optimizer for binary weights (Helwegen et al., NeurIPS 2019), and its
second-order variant (Suarez-Ramirez et al., CVPR-W 2021).

Bop keeps one buffer per binary weight, an exponential moving average of its gradient, and flips
the weight when that average is strong and agrees in sign with the weight:

.. math::
    m_t = m_{t-1} + \gamma (g_t - m_{t-1}) \qquad
    w_t = \begin{cases} -\mathrm{sign}(w_{t-1}) & w_{t-1} m_t > \tau \\
                        \mathrm{sign}(w_{t-1}) & \text{otherwise} \end{cases}

with sign(0) = +1, so a real-valued weight becomes +/-1 on its first step (as in Larq, whose
behaviour the paper's code relies on). Deliberate deviation from Larq: at exact equality
``w * m == threshold`` onebit keeps ``w`` (the paper's strict Algorithm 2); Larq sets it to +1.

Scheduling gamma: gamma is stored as each param group's ``"lr"``, so every stock
``torch.optim.lr_scheduler`` scheduler drives it unchanged (``StepLR(bop, 100, 0.1)`` is the
paper's sec. 5.2 decay). ``bop.gamma`` reads and writes it for all groups; a param group dict may
also say ``"gamma"``, which is stored as ``"lr"``.

The EMA is computed as three separately rounded float operations, m + (gamma * (g - m)), as Larq
does (no fused multiply-add), in every code path, so the single-tensor, foreach and compiled
paths agree bit for bit.

Flips of the last step are kept as tensors, never read on the host inside ``step``:
``bop.state[p]["flips"]`` per parameter and ``bop.last_flips`` in total (int64, 0-dim).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterable

import torch
from torch.optim import Optimizer

from ..functional import write_sign

__all__ = ["Bop", "Bop2ndOrder", "bop"]


def _real(value) -> bool:
    """A finite real number (not a bool); tensors are checked by the caller's schedule."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_gamma(gamma, name="gamma"):
    if not isinstance(gamma, torch.Tensor) and not (_real(gamma) and 0.0 < gamma <= 1.0):
        raise ValueError(f"Invalid {name}: {gamma!r}; it must lie in (0, 1]")


def _check_threshold(threshold, name="threshold"):
    if not isinstance(threshold, torch.Tensor) and not (_real(threshold) and threshold >= 0.0):
        raise ValueError(f"Invalid {name}: {threshold!r}; it must be >= 0 (a finite number)")


def _as_param_list(params, owner):
    if isinstance(params, torch.Tensor) or not hasattr(params, "__iter__"):
        raise TypeError(
            f"{owner} params={type(params).__name__}: expected an iterable of tensors or param-group dicts, "
            "e.g. onebit.binary_parameters(model)"
        )
    params = list(params)
    if not params:
        raise ValueError(
            f"{owner} got an empty parameter list (params=[]); pass the binary weights, "
            "e.g. onebit.binary_parameters(model)"
        )
    return params


def _bop_single(w, g, m, gamma, threshold):
    """One parameter's Bop update in place; returns the number of flips (0-dim int64)."""
    m.add_(torch.sub(g, m).mul_(gamma))
    flip = torch.mul(w, m) > threshold
    write_sign(w, flip)
    return flip.sum()


def _fused_update(w, g, m, gamma, threshold):
    """Bop's update written as one expression so torch.compile emits a single pass."""
    m_new = m + gamma * (g - m)
    flip = w * m_new > threshold
    w.copy_(torch.where(torch.logical_xor(w < 0, flip), -1.0, 1.0).to(w.dtype))  # write_sign, traceable
    m.copy_(m_new)
    return flip.sum()


# Groups with at least this many weights take the compiled path by default (fused=None): below it
# the one-off compile (seconds) costs more than it saves.
FUSED_MIN_NUMEL = 1 << 20


def _flat_views(*tensors):
    """1-D views of same-layout dense tensors (any memory format), so one kernel fits all."""
    first = tensors[0]
    dense = (
        first.is_contiguous()
        or (first.dim() == 4 and first.is_contiguous(memory_format=torch.channels_last))
        or (first.dim() == 5 and first.is_contiguous(memory_format=torch.channels_last_3d))
    )
    if not dense or any(t.stride() != first.stride() or t.shape != first.shape for t in tensors):
        return None
    return [t.as_strided((t.numel(),), (1,), t.storage_offset()) for t in tensors]


class FusedStep:
    """Bop's update compiled by ``torch.compile`` into one pass per tensor, compiled on first call.

    Each ``Bop`` owns one (no process-wide state); where compiling fails (no C compiler,
    unsupported device, ...) it warns once and runs the same update eagerly from then on."""

    def __init__(self):
        self._fn = None

    def __call__(self, w, g, m, gamma, threshold):
        if self._fn is None:
            self._fn = torch.compile(_fused_update, dynamic=True, fullgraph=True)
        try:
            return self._fn(w, g, m, gamma, threshold)
        except Exception as err:  # no C compiler, unsupported device, ...
            if self._fn is _fused_update:
                raise
            warnings.warn(f"Bop: torch.compile failed ({type(err).__name__}: {err}); using eager Bop", stacklevel=2)
            self._fn = _fused_update
            return _fused_update(w, g, m, gamma, threshold)


def bop(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    *,
    gamma: float,
    threshold: float,
    maximize: bool = False,
    foreach: bool = False,
    fused: bool = False,
    fused_step: FusedStep | None = None,
) -> list[torch.Tensor]:
    """Functional Bop: update ``params`` and ``exp_avgs`` in place, return flips per parameter.

    ``fused_step``: the compiled update to use with ``fused=True`` (a ``Bop`` passes its own);
    None compiles a new one (torch.compile's cache makes that cheap after the first)."""
    if maximize:
        grads = torch._foreach_neg(grads) if foreach else [-g for g in grads]
    if fused:
        fused_step = fused_step if fused_step is not None else FusedStep()
        flips = []
        # 0-dim tensors, not Python floats: a new gamma (a schedule) must not trigger a recompile.
        gamma_t = torch.as_tensor(gamma, dtype=params[0].dtype, device=params[0].device)
        threshold_t = torch.as_tensor(threshold, dtype=params[0].dtype, device=params[0].device)
        for w, g, m in zip(params, grads, exp_avgs):
            flat = _flat_views(w, g, m)
            if flat is None:  # exotic strides: eager, rather than one compile per layout
                flips.append(_bop_single(w, g, m, gamma, threshold))
            else:
                flips.append(fused_step(*flat, gamma_t, threshold_t))
        return flips
    if not foreach:
        return [_bop_single(w, g, m, gamma, threshold) for w, g, m in zip(params, grads, exp_avgs)]
    deltas = torch._foreach_sub(grads, exp_avgs)
    torch._foreach_mul_(deltas, gamma)
    torch._foreach_add_(exp_avgs, deltas)
    del deltas
    products = torch._foreach_mul(params, exp_avgs)
    flips = []
    for w, prod in zip(params, products):
        flip = prod > threshold
        write_sign(w, flip)
        flips.append(flip.sum())
    return flips


def _same_in_every_group(optimizer: Optimizer, key: str, name: str):
    """The value of ``key`` shared by every param group (``ValueError`` naming them if they differ)."""
    values = [group[key] for group in optimizer.param_groups]
    if any(v != values[0] for v in values[1:]):
        raise ValueError(
            f"{type(optimizer).__name__}.{name}: the param groups differ ({', '.join(map(str, values))}); "
            f"read optimizer.param_groups[i][{key!r}]"
        )
    return values[0]


def _repr_with_gamma(optimizer: Optimizer) -> str:
    """torch.optim's repr, with gamma (stored as ``"lr"`` for the schedulers) under its own name."""
    lines = [f"{type(optimizer).__name__} ("]
    for i, group in enumerate(optimizer.param_groups):
        lines.append(f"Parameter Group {i}")
        items = {("gamma" if k == "lr" else k): v for k, v in group.items() if k != "params"}
        lines += [f"    {k}: {items[k]}" for k in sorted(items)]
    return "\n".join(lines) + "\n)"


class Bop(Optimizer):
    r"""Bop: flip a binary weight when the EMA of its gradient exceeds ``threshold`` and agrees
    with the weight's sign (Helwegen et al., 2019). Implements Larq's ``Bop`` (see module doc).

    Args:
        params: the binary weights (``onebit.binary_parameters(model)``) or param-group dicts.
        gamma: adaptivity rate in (0, 1], the EMA's rate; stored as the group's ``"lr"``.
        threshold: tau >= 0, the strength the averaged gradient needs for a flip.
        maximize: flip so as to maximize the objective.
        foreach: use the multi-tensor eager path (the default when not fused).
        fused: one compiled pass per tensor (torch.compile, eager fallback), the fastest path
            (about 10x the eager step on BinaryNet, near memory bandwidth). ``None`` (default):
            fused for param groups of at least ``FUSED_MIN_NUMEL`` (2^20) weights, where the
            compile (seconds, cached on disk) pays off; eager below.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        gamma: float = 1e-4,
        threshold: float = 1e-8,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ):
        _check_gamma(gamma)
        _check_threshold(threshold)
        params = _as_param_list(params, type(self).__name__)
        defaults = dict(lr=gamma, threshold=threshold, maximize=maximize, foreach=foreach, fused=fused)
        super().__init__(params, defaults)
        self.last_flips: torch.Tensor | None = None
        self._fused_step = FusedStep()

    def add_param_group(self, param_group: dict) -> None:
        if "gamma" in param_group:
            param_group = dict(param_group)
            param_group["lr"] = param_group.pop("gamma")
        if "lr" in param_group:
            _check_gamma(param_group["lr"])
        if "threshold" in param_group:
            _check_threshold(param_group["threshold"])
        super().add_param_group(param_group)

    @property
    def gamma(self) -> float:
        """gamma of every param group (set it to change every group). When the groups' gammas
        differ there is no one value: ``ValueError``; read ``param_groups[i]["lr"]`` instead."""
        return _same_in_every_group(self, "lr", "gamma")

    @gamma.setter
    def gamma(self, value: float) -> None:
        _check_gamma(value)
        for group in self.param_groups:
            group["lr"] = value

    @property
    def threshold(self) -> float:
        """threshold of every param group (set it to change every group); ``ValueError`` when the
        groups' thresholds differ (read ``param_groups[i]["threshold"]`` instead)."""
        return _same_in_every_group(self, "threshold", "threshold")

    def __repr__(self) -> str:
        return _repr_with_gamma(self)

    @threshold.setter
    def threshold(self, value: float) -> None:
        _check_threshold(value)
        for group in self.param_groups:
            group["threshold"] = value

    def _init_group(self, group, params, grads, exp_avgs):
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("Bop does not support sparse gradients")
            params.append(p)
            grads.append(p.grad)
            state = self.state[p]
            if len(state) == 0:
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            exp_avgs.append(state["exp_avg"])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One Bop step; returns the closure's loss. Flips go to ``last_flips``/state, no host sync."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        total = None
        for group in self.param_groups:
            params, grads, exp_avgs = [], [], []
            self._init_group(group, params, grads, exp_avgs)
            if not params:
                continue
            fused = group["fused"]
            if fused is None:
                fused = sum(p.numel() for p in params) >= FUSED_MIN_NUMEL
            foreach = group["foreach"]
            if foreach is None:
                foreach = not fused
            flips = bop(
                params,
                grads,
                exp_avgs,
                gamma=group["lr"],
                threshold=group["threshold"],
                maximize=group["maximize"],
                foreach=foreach,
                fused=fused,
                fused_step=self.__dict__.setdefault("_fused_step", FusedStep()),  # unpickled: a new one
            )
            for p, f in zip(params, flips):
                self.state[p]["flips"] = f
            group_total = torch.stack(flips).sum() if len(flips) > 1 else flips[0]
            total = group_total if total is None else total + group_total
        self.last_flips = total
        return loss


class Bop2ndOrder(Optimizer):
    r"""Second-order Bop (Suarez-Ramirez et al., 2021): also keeps v, an EMA of g^2, and flips
    where the normalised signal agrees with the weight:

    m <- m + gamma (g - m);  v <- v + sigma (g^2 - v);  flip where w * m / (sqrt(v) + eps) > threshold.

    gamma is stored as the group's ``"lr"`` (schedulable like Bop's); sigma and threshold as keys.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        gamma: float = 1e-6,
        sigma: float = 1e-2,
        threshold: float = 1e-6,
        eps: float = 1e-10,
        *,
        maximize: bool = False,
    ):
        _check_gamma(gamma)
        _check_gamma(sigma, "sigma")
        _check_threshold(threshold)
        _check_threshold(eps, "eps")
        params = _as_param_list(params, type(self).__name__)
        defaults = dict(lr=gamma, sigma=sigma, threshold=threshold, eps=eps, maximize=maximize)
        super().__init__(params, defaults)
        self.last_flips: torch.Tensor | None = None

    def __repr__(self) -> str:
        return _repr_with_gamma(self)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        flips = []
        for group in self.param_groups:
            for w in group["params"]:
                if w.grad is None:
                    continue
                g = -w.grad if group["maximize"] else w.grad
                state = self.state[w]
                if len(state) == 0:
                    state["exp_avg"] = torch.zeros_like(w)
                    state["exp_avg_sq"] = torch.zeros_like(w)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(g, group["lr"])
                v.lerp_(g * g, group["sigma"])
                flip = w * m / (v.sqrt() + group["eps"]) > group["threshold"]
                write_sign(w, flip)
                state["flips"] = flip.sum()
                flips.append(state["flips"])
        self.last_flips = torch.stack(flips).sum() if flips else None
        return loss
