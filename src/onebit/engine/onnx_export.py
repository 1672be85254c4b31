"""Export to a standard ONNX graph (float arithmetic), for onnxruntime and other ONNX runtimes.

The graph holds no custom op, so any ONNX runtime runs it; it is not bit-packed (use
``onebit.engine.export`` for that). It computes what torch computes, ties included:

- a quantized layer with a +/-1 or +/-alpha-per-channel kernel whose input is quantized to
  integer levels (sign: +/-1; DoReFa's k-bit activations, k <= 8: the levels 0..n of
  round(clip(x, 0, 1) n), n = 2^k - 1) becomes its integer dot: the layer on those levels with its
  +/-1 kernel, then ``Round`` (exact on integers below 2^24, and a barrier no runtime fuses a
  later scale or batch norm across, which would change the rounding), then ``* s + bias`` with
  the float32 scale s = alpha / n (alpha / 1 for sign inputs);
- where batch norm, max-pooling and flatten lead from such a dot to the next quantizer (a sign or
  DoReFa activations), they become comparisons of the integer dot against per-channel integer
  thresholds, the rule the packed engine uses (``engine.thresholds``): the level torch's
  quantizer gives, with every tie where torch's own ops put it, so a value exactly 0 in torch
  (sign(0) = +1) cannot come out as -2e-7 in the runtime and flip, nor a DoReFa value next to
  a rounding boundary round to the other level;
- every other sign is ``Where(x >= 0, 1, -1)``, every other DoReFa activation
  ``Round(clip(x, 0, 1) n) / n``;
- batch norm is ``x * a + b`` with torch's a and b; every other kernel is stored quantized, and
  ``pad_values`` become explicit constant ``Pad`` ops.

The answer this defines, and that a test compares with, is torch's forward with each such layer
summed exactly: its output is the float32 product (integer dot) * s + bias, and everything after
it (batch norm, pooling, the next quantizer's rounding, half to even) is torch's float32 ops on
that value. torch's own float32 convolution adds DoReFa's inexact levels k/3 times +/-alpha in an
order of its own (it depends on the thread count and memory layout), so a value within ~1e-7 of
a rounding boundary can land on either level there; the exact sum is the one answer that does not
depend on how torch happened to add; the packed engine sums these layers exactly too. A
real-valued layer (a model's first) stays a float sum in both runtimes, so a value it gives within
float rounding of the next quantizer's boundary can still fall either way.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import fx, nn

from .. import quantizers as q
from ..functional import sign
from ..kernels.bits import EngineError
from ..layers import Pool2dSame, QuantLayer
from ..layers.quantized import QuantConvTranspose2d
from .exporter import _binary_kernel, _bn_affine, _qname, _Tracer
from .thresholds import level_thresholds, sign_level

__all__ = ["export_onnx", "onnx_ready"]


class OnnxSign(nn.Module):
    """sign(x) with sign(0) = +1 as ONNX ops: Where(GreaterOrEqual(x, 0), 1, -1)."""

    def forward(self, x):
        return sign(x)


class OnnxDoReFa(nn.Module):
    """DoReFa's k-bit activations, round(clip(x, 0, 1) * n) / n (half to even), as plain ops."""

    def __init__(self, k_bit: int):
        super().__init__()
        self.n = float(2**k_bit - 1)

    def forward(self, x):
        return torch.round(torch.clamp(x, 0.0, 1.0) * self.n) / self.n


class OnnxLevels(nn.Module):
    """DoReFa's integer levels, round(clip(x, 0, 1) * n) (half to even): an integer-dot layer's input."""

    def __init__(self, levels: int):
        super().__init__()
        self.n = float(levels)

    def forward(self, x):
        return torch.round(torch.clamp(x, 0.0, 1.0) * self.n)


def _per_channel(values, x):
    """``values`` (C,) shaped to broadcast along axis 1 of ``x``."""
    return values.reshape((-1,) + (1,) * (x.dim() - 2))


class Affine(nn.Module):
    """``x * scale + shift`` per channel (axis 1), either optional: batch norm as torch computes
    it in eval mode, a binary layer's kernel scale and bias, a threshold's direction."""

    def __init__(self, scale=None, shift=None):
        super().__init__()
        for key, value in (("scale", scale), ("shift", shift)):
            self.register_buffer(key, None if value is None else torch.as_tensor(value).float().flatten())

    def forward(self, x):
        if self.scale is not None:
            x = x * _per_channel(self.scale, x)
        return x if self.shift is None else x + _per_channel(self.shift, x)


class _Levels(NamedTuple):
    """An activation quantizer the export runs as integer levels 0..n: sign() (n = 1, levels 0
    and 1 for -1 and +1) or DoReFa's k-bit activations (n = 2^k - 1, k <= 8; value level / n)."""

    n: int
    sign: bool


class IntegerDot(nn.Module):
    """A quantized layer's dot product on its integer input levels (+/-1 for sign inputs, 0..n
    for DoReFa's) and its +/-1 kernel (no scale, no bias): an integer, held as float; ``Round``
    keeps runtimes from folding what follows into the layer."""

    def __init__(self, layer: QuantLayer, signs: torch.Tensor, levels: _Levels):
        super().__init__()
        self.levels = levels
        self.layer = copy.deepcopy(layer)
        self.layer.weight = nn.Parameter(signs, requires_grad=False)
        self.layer.bias = None
        self.layer.kernel_quantizer = None
        self.layer.kernel_constraint = None
        self.layer.input_quantizer = OnnxSign() if levels.sign else OnnxLevels(levels.n)

    def forward(self, x):
        return torch.round(self.layer(x))


class BelowThreshold(nn.Module):
    """The signs torch would give after batch norm: -1 where ``x < thr`` per channel, else +1
    (``x`` is the integer dot times the channel's direction, ``thr`` an integer)."""

    def __init__(self, thr):
        super().__init__()
        self.register_buffer("thr", torch.as_tensor(thr).float().flatten())

    def forward(self, x):
        return torch.where(x < _per_channel(self.thr, x), -1.0, 1.0)


class LevelsAbove(nn.Module):
    """The DoReFa value torch's quantizer would give after batch norm: level / n, the level being
    how many of the channel's n integer thresholds ``x`` reaches (``x`` as for ``BelowThreshold``).
    The reading layer's quantizer gives this value back unchanged: round(level / n * n) = level."""

    def __init__(self, thr):
        super().__init__()
        self.register_buffer("thr", torch.as_tensor(thr).float())
        self.n = float(self.thr.shape[1])

    def forward(self, x):
        thr = self.thr.reshape((self.thr.shape[0],) + (1,) * (x.dim() - 2) + (-1,))
        return (x.unsqueeze(-1) >= thr).to(x.dtype).sum(-1) / self.n


def _put(model: nn.Module, name: str, module: nn.Module) -> None:
    """Set submodule ``name`` (dotted) of ``model`` to ``module``."""
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def _replace_quantizers(model: nn.Module) -> None:
    """Input and standalone activation quantizers as ONNX-exportable ops; kernels stored quantized."""
    for name, m in list(model.named_modules()):
        if isinstance(m, QuantLayer):
            if m.input_quantizer is not None:
                m.input_quantizer = _onnx_quantizer(name, m.input_quantizer)
            if m.kernel_quantizer is not None:
                with torch.no_grad():
                    m.weight.data = m.quantized_weight().detach().clone()
                m.kernel_quantizer = None
            m.kernel_constraint = None
    for name, m in list(model.named_modules()):
        if isinstance(m, q.Quantizer):
            _put(model, name, _onnx_quantizer(name, m))
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            _put(model, name, Affine(*_bn_affine(m)))


def _onnx_quantizer(name: str, quantizer) -> nn.Module:
    if isinstance(quantizer, (OnnxSign, OnnxDoReFa, OnnxLevels)):
        return quantizer
    if q.is_sign(quantizer):
        return OnnxSign()
    if isinstance(quantizer, q.DoReFa) and quantizer.mode == "activations":
        return OnnxDoReFa(quantizer.k_bit)
    raise EngineError(
        f"layer {name!r}: quantizer {_qname(quantizer)} is not supported by the ONNX export "
        f"(it takes sign quantizers, DoReFa activations and real inputs)"
    )


# ------------------------------------------------------------------------ exact quantized layers

_MAX_LEVEL_BITS = 8  # DoReFa activations of more bits stay float ops (n thresholds per channel)


@dataclass
class _Dot:
    """A quantized layer's integer dot in the rewritten graph and what torch computes from it."""

    name: str
    layer: QuantLayer
    node: fx.Node  # the IntegerDot
    k: int  # the largest |dot|: the input's top level n times the fan-in
    scale: object  # numpy (O,) float32 alpha / n, or None (1)
    bias: object  # numpy (O,) or None


@dataclass
class _Chain:
    """Ops from a dot to a quantizer: max pools on f(d), at most one batch norm, max pools, flattens."""

    pre: list = field(default_factory=list)
    bn: object = None
    post: list = field(default_factory=list)
    flatten: list = field(default_factory=list)


def _is_max_pool(m) -> bool:
    return isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)) or (isinstance(m, Pool2dSame) and m.kind == "max")


def _is_flatten(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), nn.Flatten)
    return (node.op == "call_function" and node.target is torch.flatten) or (
        node.op == "call_method" and node.target == "flatten"
    )


def _levels_of(quantizer) -> _Levels | None:
    """The integer levels of an activation quantizer the export runs exactly; None for others."""
    if isinstance(quantizer, q.Quantizer) and q.is_sign(quantizer):
        return _Levels(1, True)
    if isinstance(quantizer, q.DoReFa) and quantizer.mode == "activations" and quantizer.k_bit <= _MAX_LEVEL_BITS:
        return _Levels(2**quantizer.k_bit - 1, False)
    return None


def _reader_levels(node: fx.Node, gm: fx.GraphModule) -> _Levels | None:
    """``_levels_of`` the quantizer that ``node`` applies to its first input (a layer's input
    quantizer, an integer dot's or a quantizer alone); None if it applies none of those."""
    if node.op != "call_module":
        return None
    m = gm.get_submodule(node.target)
    if isinstance(m, IntegerDot):
        return m.levels
    return _levels_of(m.input_quantizer if isinstance(m, QuantLayer) else m)


def _level_rule(levels: _Levels):
    """The integer level torch's quantizer gives a float32 value: sign()'s 0 / 1, or DoReFa's
    round(q(v) n) computed with the quantizer itself (q(v) = level / n, so rounding is exact)."""
    if levels.sign:
        return sign_level
    quantizer = q.DoReFa(k_bit=levels.n.bit_length(), mode="activations")
    return lambda v: torch.round(quantizer(v) * levels.n).to(torch.int64)


def _fan_in(layer: QuantLayer) -> int:
    """How many kernel weights one output value sums."""
    w = layer.weight
    if isinstance(layer, QuantConvTranspose2d):  # (in, out / groups, kh, kw)
        return int(w.shape[0] // layer.groups * w[0, 0].numel())
    return int(w[0].numel())


def _dot_scale(alpha, n: int, channels: int):
    """The float32 factor of a layer's integer dot on levels 0..n (or +/-1, n = 1): alpha / n
    (alpha = 1 if None), rounded once as torch rounds ``alpha / n``; None where it is 1."""
    if n == 1:
        return alpha
    alpha = np.ones(channels, np.float32) if alpha is None else alpha
    return (alpha / np.float32(n)).astype(np.float32)


def _integer_dots(gm: fx.GraphModule) -> dict[fx.Node, _Dot]:
    """Replace every quantized layer with integer input levels and a +/-alpha kernel by its
    IntegerDot (+ scale and bias): {float output: _Dot}."""
    dots = {}
    for node in list(gm.graph.nodes):
        m = gm.get_submodule(node.target) if node.op == "call_module" else None
        levels = _levels_of(m.input_quantizer) if isinstance(m, QuantLayer) else None
        if levels is None:
            continue
        try:
            kernel = _binary_kernel(m, node.target)
        except EngineError:  # a 1-bit kernel that is not +/-alpha: stays a float layer
            kernel = None
        k = levels.n * _fan_in(m)
        if kernel is None or k >= 2**24:  # float32 sums of integers are exact below 2^24
            continue
        if isinstance(m, QuantConvTranspose2d) and kernel[1] is not None:  # alpha per input channel
            continue
        signs = 1.0 - 2.0 * torch.from_numpy(kernel[0]).float()
        bias = m.bias.detach().float().numpy() if m.bias is not None else None
        scale = _dot_scale(kernel[1], levels.n, getattr(m, "out_channels", None) or m.out_features)
        target = f"onnx_dot_{len(dots)}"
        gm.add_submodule(target, IntegerDot(m, signs, levels))
        with gm.graph.inserting_after(node):
            dot = gm.graph.call_module(target, node.args, node.kwargs)
        out = dot
        if scale is not None or bias is not None:
            gm.add_submodule(target + "_scale", Affine(scale, bias))
            with gm.graph.inserting_after(dot):
                out = gm.graph.call_module(target + "_scale", (dot,))
        node.replace_all_uses_with(out)
        gm.graph.erase_node(node)
        dots[out] = _Dot(str(node.target), m, dot, k, scale, bias)
    return dots


def _chain_to(node, dots, gm) -> tuple[_Dot, _Chain] | None:
    """The dot that ``node`` is computed from by a foldable chain, and the chain; else None."""
    ops = []
    while isinstance(node, fx.Node) and node not in dots:
        if node.op == "call_module" and not _is_flatten(node, gm):
            m = gm.get_submodule(node.target)
            if not (_is_max_pool(m) or isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))):
                return None
        elif not _is_flatten(node, gm):
            return None
        ops.append(node)
        node = node.args[0] if node.args else None
    if not isinstance(node, fx.Node) or isinstance(dots[node].layer, QuantConvTranspose2d):
        return None
    chain = _Chain()
    for op in reversed(ops):
        m = gm.get_submodule(op.target) if op.op == "call_module" else None
        if _is_flatten(op, gm):
            chain.flatten.append(op)
        elif chain.flatten:  # pooling or batch norm after a flatten
            return None
        elif _is_max_pool(m):
            (chain.post if chain.bn is not None else chain.pre).append(op)
        elif chain.bn is not None or m.num_features != dots[node].layer.weight.shape[0] or m.running_mean is None:
            return None
        else:
            chain.bn = m
    return dots[node], chain


def _fold_quantizers(gm: fx.GraphModule, dots: dict[fx.Node, _Dot]) -> None:
    """Feed every quantizer (sign or DoReFa) reached from a dot by a foldable chain the threshold
    comparison instead: the value the quantizer would give, which it then gives back unchanged."""
    graph = gm.graph
    for node in list(graph.nodes):
        levels = _reader_levels(node, gm)
        if levels is None or not node.args:
            continue
        found = _chain_to(node.args[0], dots, gm)
        if found is None:
            continue
        dot, chain = found
        channels = int(dot.layer.weight.shape[0])
        sgn, thr, _ = level_thresholds(
            dot.name, dot.k, channels, levels.n, _level_rule(levels), dot.scale, dot.bias, chain.bn
        )
        target = f"{dot.node.target}_thr_{node.name}"
        gm.add_submodule(target, BelowThreshold(thr[:, 0]) if levels.sign else LevelsAbove(thr))
        with graph.inserting_before(node):
            x = dot.node
            for op in chain.pre:  # max pools commute with the increasing alpha * d + bias
                x = graph.call_module(op.target, (x,))
            if (sgn < 0).any():  # sgn * d increases with f(d) in every channel
                gm.add_submodule(target + "_dir", Affine(sgn))
                x = graph.call_module(target + "_dir", (x,))
            for op in chain.post:
                x = graph.call_module(op.target, (x,))
            x = graph.call_module(target, (x,))
            for op in chain.flatten:  # quantizers and flatten commute
                x = graph.create_node(op.op, op.target, (x,) + tuple(op.args[1:]), dict(op.kwargs))
        node.update_arg(0, x)


def onnx_ready(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) made of ONNX-exportable torch ops that computes what the
    model computes, with quantized layers as integer dots and the quantizers after them as
    thresholds (a model that ``torch.fx`` cannot trace keeps float quantizers, with a warning)."""
    model = copy.deepcopy(model).eval()
    try:
        gm = fx.GraphModule(model, _Tracer().trace(model))
    except Exception as e:  # noqa: BLE001 - any tracing failure: export without the rewrite
        warnings.warn(
            f"torch.fx cannot trace {type(model).__name__} ({e}); its binary layers are exported as "
            f"float convolutions, where a value exactly 0 in torch may come out as +/-1e-7",
            stacklevel=3,
        )
        _replace_quantizers(model)
        return model
    with torch.no_grad():
        _fold_quantizers(gm, _integer_dots(gm))
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    _replace_quantizers(gm)
    return gm


def _input_size(input_size) -> tuple[int, ...]:
    if input_size is None:
        raise EngineError(
            "export_onnx needs input_size, the input's shape with a batch axis, e.g. (1, 3, 32, 32); "
            "onebit.model_info(name).input_size is a zoo model's"
        )
    try:
        size = tuple(int(v) for v in input_size)
    except (TypeError, ValueError):
        size = ()
    if len(size) < 2 or min(size) < 1:
        raise EngineError(f"input_size={input_size!r} must be a shape with a batch axis, e.g. (1, 3, 32, 32)")
    return size


def export_onnx(
    model: nn.Module,
    path,
    input_size=None,
    opset_version: int | None = None,
    dynamic_batch: bool = True,
    dynamo: bool = False,
) -> str:
    """Write ``model`` to ``path`` as ONNX for inputs of ``input_size`` (with the batch axis,
    e.g. (1, 3, 32, 32); required). The batch axis is dynamic unless ``dynamic_batch=False``.

    ``dynamo=True`` uses torch's newer ``torch.export``-based exporter (needs onnxscript); the
    default is the TorchScript-based one. ``opset_version`` defaults to 17, or to 18 with
    ``dynamo=True`` (that exporter writes 18 and cannot convert a ``Pad`` down). Returns ``str(path)``."""
    size = _input_size(input_size)
    if dynamo:
        try:
            import onnxscript  # noqa: F401
        except ImportError:
            raise EngineError("export_onnx(dynamo=True) needs onnxscript (pip install onnxscript)") from None
    ready = onnx_ready(model)
    x = torch.zeros(size)
    try:
        with torch.no_grad():
            ready(x)
    except RuntimeError as e:
        reason = next((t.strip() for t in str(e).splitlines() if t.strip()), type(e).__name__)
        raise EngineError(f"input_size={size}: {type(model).__name__} does not run on it ({reason})") from None
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            ready,
            (x,),
            str(path),
            input_names=["input"],
            output_names=["output"],
            opset_version=opset_version or (18 if dynamo else 17),
            dynamic_axes=axes,
            dynamo=dynamo,
        )
    return str(path)
