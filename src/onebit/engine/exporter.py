"""Export a trained model to the engine's packed file (needs torch; the runtime does not).

The model is traced with ``torch.fx`` (onebit layers and quantizers are leaves), its shapes come
from one forward pass on zeros of ``input_size``, and every node becomes an engine op:

- a quantized layer with a sign input quantizer and a +/-1 (or +/-alpha per output channel) kernel
  is a binary layer (``bconv2d`` / ``bdense``), its kernel packed along the input channels;
- a layer with a real-valued input is a float layer; a 1-bit kernel is still stored 1 bit each;
- batch norm, max-pool and flatten between a binary layer and the next sign fold into per-channel
  integer thresholds, so that layer writes packed bits (Larq Compute Engine does the same). The
  thresholds are found by evaluating the torch ops themselves on every reachable integer dot, so
  the packed bits equal torch's sign() exactly, ties and negative batch-norm scales included;
- everything else maps to a float op, or is refused with a one-line ``EngineError`` naming the layer.
"""

from __future__ import annotations

import contextlib
import io
import operator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from .. import quantizers as q
from ..kernels import bits as _bits
from ..kernels.bits import EngineError, pack_bool
from ..kernels.geometry import same_padding
from ..layers import Pool2dSame, QuantConv2d, QuantDepthwiseConv2d, QuantLayer, QuantLinear
from .thresholds import sign_thresholds

__all__ = ["export", "build", "EngineError"]


# Pool2dSame (TensorFlow-style "same" pooling) is shape-dependent: a leaf with its own rule.
# Batch norms of every class (Keras' own, from ``onebit.from_larq``, too) normalize dim 1: leaves.
_BATCH_NORM = nn.modules.batchnorm._BatchNorm
_LEAVES = (QuantLayer, q.Quantizer, Pool2dSame, _BATCH_NORM)


class _Tracer(fx.Tracer):
    """torch.fx tracer that keeps onebit layers, quantizers and the zoo's same-pooling whole."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, _LEAVES):
            return True
        return super().is_leaf_module(m, qualname)


@dataclass
class _Op:
    """One op of the float-semantics graph, before lowering."""

    kind: str
    name: str
    inputs: list
    out: str
    shape: tuple
    module: object = None
    attrs: dict = field(default_factory=dict)


def _qname(quantizer) -> str:
    return type(quantizer).__name__ if isinstance(quantizer, nn.Module) else repr(quantizer)


def _binary_kernel(layer, name):
    """(sign bits (bool, torch layout), alpha (O,) or None) of a 1-bit kernel, else None."""
    if layer.kernel_precision != 1:
        if layer.kernel_quantizer is not None and layer.kernel_precision != 32:
            raise EngineError(
                f"layer {name!r}: kernel_quantizer {_qname(layer.kernel_quantizer)} has "
                f"{layer.kernel_precision} bits; the engine runs 1-bit or float kernels"
            )
        return None
    with torch.no_grad():
        w = layer.quantized_weight().detach().float()
    mag = w.abs().reshape(w.shape[0], -1)
    alpha = mag.amax(dim=1)
    if not torch.equal(mag, alpha[:, None].expand_as(mag)) or bool((alpha == 0).any()):
        raise EngineError(
            f"layer {name!r}: kernel_quantizer {_qname(layer.kernel_quantizer)} gives a kernel that "
            f"is not +/-alpha per output channel (e.g. NoOp on weights not in {{-1, +1}}); "
            f"train with Bop or a sign quantizer"
        )
    bits = (w < 0).numpy()
    if bool((alpha == 1).all()):
        return bits, None
    return bits, alpha.numpy().astype(np.float32)


def _quantized_weight(layer) -> np.ndarray:
    """The kernel a layer computes with (its kernel quantizer applied), float32, torch's layout."""
    with torch.no_grad():
        w = layer.quantized_weight() if isinstance(layer, QuantLayer) else layer.weight
    return w.detach().float().numpy().copy()


def _conv_pads(m, spatial):
    if isinstance(m, QuantLayer):
        return [tuple(int(v) for v in p) for p in m.padding_for(tuple(spatial))]
    if m.padding == "same":
        pads = []
        for k, d in zip(m.kernel_size, m.dilation):
            total = d * (k - 1)
            pads.append((total // 2, total - total // 2))
        return pads
    return [(int(p), int(p)) for p in m.padding]


def _pool_params(kernel, stride, padding):
    pair = nn.modules.utils._pair
    kernel = pair(kernel)
    stride = pair(stride if stride not in (None, ()) else kernel)
    padding = pair(padding)
    return list(kernel), list(stride), [[padding[0], padding[0]], [padding[1], padding[1]]]


def _bn_affine(bn):
    """Batch norm in eval mode as x * a + b (float32), the way torch's CPU kernel computes it."""
    if bn.running_mean is None:
        raise EngineError("batch norm without running statistics (track_running_stats=False)")
    invstd = 1.0 / torch.sqrt(bn.running_var.float() + bn.eps)
    w = bn.weight.detach().float() if bn.weight is not None else torch.ones_like(invstd)
    b = bn.bias.detach().float() if bn.bias is not None else torch.zeros_like(invstd)
    a = w * invstd
    return a.numpy().astype(np.float32), (b - bn.running_mean.float() * a).numpy().astype(np.float32)


def _target_name(node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__qualname__", None) or getattr(t, "__name__", str(t))


def _describe(node) -> str:
    """How a refusal names a graph node: the layer's module path or the op and its function."""
    if node.op == "call_module":
        return f"layer {node.target!r}"
    return f"op {node.name!r} ({_target_name(node)}){_within(node)}"


def _within(node) -> str:
    """`` in layer 'path'``: the innermost module whose forward() called a function node, if any."""
    stack = node.meta.get("nn_module_stack") or {}
    return f" in layer {next(reversed(stack))!r}" if stack else ""


def _pad_widths(pads, rank):
    """[before, after] per dim of a tensor of ``rank`` dims from F.pad's ``pads`` (the last dim
    first), or None where the engine cannot pad so (negative amounts, the batch axis)."""
    ok = isinstance(pads, (list, tuple)) and len(pads) % 2 == 0 and len(pads) // 2 <= rank - 1
    if not ok or not all(isinstance(v, int) and v >= 0 for v in pads):
        return None
    widths = [[0, 0]] * rank
    for i in range(len(pads) // 2):
        widths[rank - 1 - i] = [pads[2 * i], pads[2 * i + 1]]
    return widths


def _permutation(node, rank, values) -> tuple:
    """Where ``movedim`` / ``permute`` (``node``) sends each dim of a tensor of ``rank`` dims:
    the op itself applied to an empty tensor whose distinct sizes name its dims."""
    probe = torch.empty(tuple(range(2, rank + 2)))
    args = _resolve(tuple(node.args[1:]), values)
    kwargs = {k: _resolve(v, values) for k, v in node.kwargs.items()}
    fn = getattr(probe, node.target) if node.op == "call_method" else lambda *a, **k: node.target(probe, *a, **k)
    return tuple(int(v) - 2 for v in fn(*args, **kwargs).shape)


def _columns_to_torch_order(attrs, chw):
    """A dense layer's weight columns reordered from a channels-last flatten (H, W, C) of a (C,
    H, W) map to torch's (C, H, W) flatten, so the layer can read torch's flatten instead."""
    c, h, w = chw

    def reorder(a):
        return np.ascontiguousarray(a.reshape(a.shape[0], h, w, c).transpose(0, 3, 1, 2).reshape(a.shape[0], -1))

    attrs["weight"] = reorder(attrs["weight"])
    if attrs["kernel"] is not None:
        attrs["kernel"] = (reorder(attrs["kernel"][0]), attrs["kernel"][1])


_MAX_PLANES = 8  # multi-bit activations run as this many bit-planes at most


def _activation_bits(quantizer) -> int | None:
    """Bits of a DoReFa activation quantizer (the engine runs them as bit-planes), else None."""
    if isinstance(quantizer, q.DoReFa) and quantizer.mode == "activations" and quantizer.k_bit <= _MAX_PLANES:
        return quantizer.k_bit
    return None


def _activation(m):
    """(engine op kind, attributes) of an activation module, or None."""
    if isinstance(m, nn.ReLU):
        return "relu", {}
    if isinstance(m, nn.Hardtanh):  # ReLU6 too
        return "hardtanh", {"min": float(m.min_val), "max": float(m.max_val)}
    if isinstance(m, nn.PReLU):
        return "prelu", {"alpha": m.weight.detach().float().numpy().copy()}
    if isinstance(m, nn.LeakyReLU):
        return "prelu", {"alpha": np.array([m.negative_slope], np.float32)}
    if isinstance(m, nn.Sigmoid):
        return "sigmoid", {}
    if isinstance(m, nn.Tanh):
        return "tanh", {}
    return None


class _Recorder(ShapeProp):
    """ShapeProp that also keeps every node's non-tensor result (``x.shape[1] - 64``: the ints
    that shape arithmetic feeds into ``F.pad`` and the like)."""

    def __init__(self, gm):
        super().__init__(gm)
        self.values: dict = {}

    def run_node(self, n):
        result = super().run_node(n)
        if not isinstance(result, torch.Tensor):
            self.values[n.name] = result
        return result


def _resolve(value, values):
    """``value`` with every fx node replaced by its recorded result (for shape arithmetic)."""
    if isinstance(value, fx.Node):
        return values.get(value.name)
    if isinstance(value, (tuple, list)):
        return type(value)(_resolve(v, values) for v in value)
    return value


class _GraphBuilder:
    """Turns the traced torch graph into the list of float-semantics ``_Op``s."""

    def __init__(self, model, input_size):
        self.model = model
        self.modules = dict(model.named_modules())
        self.ops: list[_Op] = []
        self.shapes: dict[str, tuple] = {}
        self.input_size = tuple(int(v) for v in input_size)
        self.alias: dict[str, str] = {}
        self.channels_last: dict[str, str] = {}  # a map's movedim(1, -1): its source, for a flatten
        self.hwc: dict[str, tuple] = {}  # a flatten of a channels-last map: (C, H, W), for dense layers

    def trace(self):
        try:
            graph = _Tracer().trace(self.model)
        except Exception as e:  # noqa: BLE001 - any tracing failure is a refusal
            raise EngineError(f"cannot trace {type(self.model).__name__} with torch.fx: {e}") from None
        gm = fx.GraphModule(self.model, graph)
        recorder = _Recorder(gm)
        try:
            with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints tracebacks
                recorder.propagate(torch.zeros(self.input_size))
        except Exception as e:  # noqa: BLE001 - torch's shape errors, wrapped by fx
            cause = e.__cause__ or e
            reason = next((t.strip() for t in str(cause).splitlines() if t.strip()), type(cause).__name__)
            raise EngineError(
                f"input_size={self.input_size}: {type(self.model).__name__} does not run on it ({reason})"
            ) from None
        self.output = None
        self.values = recorder.values
        for node in gm.graph.nodes:
            meta = node.meta.get("tensor_meta")
            if meta is not None and hasattr(meta, "shape"):
                self.shapes[node.name] = tuple(meta.shape)
            self._node(node)
        return self.ops, self.output

    def _add(self, kind, node, inputs, module=None, out=None, name=None, shape=None, **attrs):
        out = out or node.name
        shape = shape if shape is not None else self.shapes.get(node.name, ())
        self.ops.append(_Op(kind, name or str(node.target), list(inputs), out, shape, module, attrs))
        return out

    def _arg(self, node, a, what="input", passes_on=False):
        """The graph value ``node`` reads as ``a`` (``passes_on``: ``node`` is the identity)."""
        if not isinstance(a, fx.Node) or (a.name not in self.shapes and a.name not in self.alias):
            raise EngineError(f"{_describe(node)}: {what} {a!r} is not a tensor of the graph")
        if a.name in self.channels_last:
            raise EngineError(
                f"{_describe(node)}: reads {a.name!r}, a map with its channels moved last; the engine "
                f"takes that only into a flatten (Keras' Flatten)"
            )
        name = self.alias.get(a.name, a.name)
        if name in self.hwc and not passes_on and not self._reads_features(node):
            raise EngineError(
                f"{_describe(node)}: reads {name!r}, a map flattened channels-last (Keras' Flatten); the "
                f"engine feeds that only to dense layers"
            )
        return name

    def _reads_features(self, node) -> bool:
        """Whether ``node`` is a dense layer (which reorders its columns) or passes its input on."""
        return node.op == "call_module" and isinstance(self.modules[node.target], (nn.Linear, nn.Identity, nn.Dropout))

    def _node(self, node):
        op = node.op
        if op == "placeholder":
            if getattr(self, "_seen_input", False):
                raise EngineError(f"input {node.name!r}: the engine runs models with one input")
            self._seen_input = True
            self.alias[node.name] = "input"
            return
        if op == "output":
            out = node.args[0]
            if isinstance(out, (tuple, list)):
                if len(out) != 1:
                    raise EngineError("the engine runs models with one output tensor")
                out = out[0]
            self.output = self._arg(node, out, "output")
            return
        if op == "get_attr":
            raise EngineError(
                f"layer {node.target!s}: parameters used directly in forward() are not supported; wrap them in a module"
            )
        if op == "call_module":
            return self._module(node, self.modules[node.target])
        return self._function(node)

    # -- modules ---------------------------------------------------------------------------------

    def _module(self, node, m):
        name = node.target
        x = self._arg(node, node.args[0])
        in_shape = self.shapes.get(node.args[0].name)
        if isinstance(m, (QuantLinear, QuantConv2d, QuantDepthwiseConv2d, nn.Linear, nn.Conv2d)):
            return self._layer(node, m, x, in_shape)
        if isinstance(m, QuantLayer) or isinstance(
            m, (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
        ):
            raise EngineError(
                f"layer {name!r} ({type(m).__name__}) is not supported; the engine runs "
                f"Conv2d (grouped and depthwise too) and Linear, quantized or not"
            )
        if isinstance(m, _BATCH_NORM):
            if len(in_shape) not in (2, 4):
                raise EngineError(f"layer {name!r}: batch norm on a {len(in_shape)}-D tensor")
            try:
                mul, add = _bn_affine(m)
            except EngineError as e:
                raise EngineError(f"layer {name!r}: {e}") from None
            return self._add("bn", node, [x], m, mul=mul, add=add)
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, Pool2dSame, nn.AdaptiveAvgPool2d)):
            return self._pool(node, m, x, in_shape)
        if isinstance(m, nn.Flatten):
            return self._flatten(node, x)
        if isinstance(m, nn.modules.padding._ConstantPadNd):
            widths = _pad_widths(tuple(m.padding), len(in_shape))
            if widths is None:
                raise EngineError(f"layer {name!r}: padding {m.padding}; the engine pads by non-negative amounts")
            return self._add("pad", node, [x], widths=widths, value=float(m.value))
        if isinstance(m, (nn.Identity, nn.Dropout, nn.Dropout2d)):
            self.alias[node.name] = x
            return
        if isinstance(m, q.Quantizer) or callable(m) and q.precision_of(m) is not None:
            return self._quantizer(node, m, x, in_shape)
        if isinstance(m, nn.Softmax):
            return self._softmax(node, x, m.dim)
        activation = _activation(m)
        if activation is not None:
            kind, attrs = activation
            return self._add(kind, node, [x], **attrs)
        raise EngineError(f"layer {name!r} ({type(m).__name__}) is not supported by the engine")

    def _quantizer(self, node, m, x, in_shape, out=None, name=None):
        """A sign quantizer (``sign``) or k-bit DoReFa activations (``levels``); else a refusal."""
        name = name or node.target
        if q.is_sign(m):
            return self._add("sign", node, [x], out=out, name=name, shape=in_shape if out else None)
        bits = _activation_bits(m)
        if bits is None:
            raise EngineError(
                f"layer {name!r}: quantizer {_qname(m)} is neither a sign (+/-1) quantizer nor "
                f"DoReFa activations of 1 to {_MAX_PLANES} bits; the engine runs those"
            )
        attrs = dict(levels=2**bits - 1, planes=bits)
        return self._add("levels", node, [x], out=out, name=name, shape=in_shape if out else None, **attrs)

    def _pool(self, node, m, x, in_shape):
        name = node.target
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return self._gap(node, x, m.output_size, keepdims=True)
        if isinstance(m, nn.MaxPool2d):
            if m.return_indices or nn.modules.utils._pair(m.dilation) != (1, 1):
                raise EngineError(f"layer {name!r}: max-pool with dilation or indices is not supported")
            k, s, p = _pool_params(m.kernel_size, m.stride, m.padding)
            return self._add("maxpool", node, [x], kernel=k, stride=s, padding=p, ceil_mode=bool(m.ceil_mode))
        if isinstance(m, nn.AvgPool2d):
            k, s, p = _pool_params(m.kernel_size, m.stride, m.padding)
            avg = dict(count_include_pad=bool(m.count_include_pad), divisor_override=m.divisor_override)
            return self._add("avgpool", node, [x], kernel=k, stride=s, padding=p, ceil_mode=bool(m.ceil_mode), **avg)
        k, st = int(m.kernel_size), int(m.stride)  # Pool2dSame
        pads = [list(same_padding(int(n), k, st, 1)) for n in in_shape[2:]]
        window = dict(kernel=[k, k], stride=[st, st], padding=pads, ceil_mode=False)
        if m.kind == "max":
            return self._add("maxpool", node, [x], **window)
        return self._add("avgpool", node, [x], count_include_pad=False, divisor_override=None, **window)

    def _layer(self, node, m, x, in_shape):
        name = node.target
        conv = isinstance(m, nn.Conv2d)
        if conv and m.padding_mode != "zeros":
            raise EngineError(
                f"layer {name!r}: padding_mode={m.padding_mode!r}; the engine pads "
                f"with a constant (padding_mode='zeros' and pad_values)"
            )
        if not conv and len(in_shape) != 2:
            raise EngineError(f"layer {name!r}: Linear on a {len(in_shape)}-D input; flatten first")
        iq = getattr(m, "input_quantizer", None)
        kernel = _binary_kernel(m, name) if isinstance(m, QuantLayer) else None
        pad_value = float(getattr(m, "pad_values", 0.0))
        attrs = dict(
            binary_input=iq is not None and q.is_sign(iq),
            planes=0 if iq is None or q.is_sign(iq) else _activation_bits(iq) or 0,
            kernel=kernel,
            groups=int(getattr(m, "groups", 1)),
            bias=None if m.bias is None else m.bias.detach().float().numpy().copy(),
            weight=_quantized_weight(m),
        )
        if not conv and x in self.hwc:
            _columns_to_torch_order(attrs, self.hwc[x])
        if conv:
            pads = _conv_pads(m, in_shape[2:])
            attrs.update(
                kernel_size=list(m.kernel_size),
                stride=list(m.stride),
                dilation=list(m.dilation),
                padding=[list(p) for p in pads],
                pad_value=pad_value,
            )
            padded = any(v for p in pads for v in p)
            if attrs["binary_input"] and kernel is not None and pad_value not in (0.0, 1.0) and padded:
                raise EngineError(
                    f"layer {name!r}: pad_values={pad_value} on a binary input; "
                    f"the engine pads binary inputs with 0 or 1"
                )
            if attrs["planes"] and kernel is not None and pad_value != 0.0 and padded:
                raise EngineError(
                    f"layer {name!r}: pad_values={pad_value} on {attrs['planes']}-bit inputs; "
                    f"the engine pads multi-bit inputs with 0"
                )
        if iq is not None:
            x = self._quantizer(node, iq, x, in_shape, out=node.name + "__in", name=name)
        return self._add("conv" if conv else "linear", node, [x], m, **attrs)

    def _gap(self, node, x, output_size, keepdims):
        if tuple(nn.modules.utils._pair(output_size)) != (1, 1):
            raise EngineError(
                f"layer {node.target!s}: adaptive pooling to {output_size}; the engine "
                f"supports global pooling (output size 1) only"
            )
        return self._add("gap", node, [x], keepdims=keepdims)

    def _flatten(self, node, x, channels_last=False):
        """A flatten to (N, features); of a map with its channels moved last (``src`` then is (N,
        H, W, C)) torch's flatten is written, and the dense layers that read it reorder their columns."""
        shape = self.shapes[node.name]
        src = self.shapes[node.args[0].name]
        if len(shape) != 2 or shape[0] != src[0]:
            raise EngineError(
                f"{_describe(node)}: reshape {src} -> {shape}; the engine supports flattening to (N, features) only"
            )
        if len(src) == 2:
            self.alias[node.name] = x
            return
        out = self._add("flatten", node, [x])
        if channels_last and src[1] * src[2] > 1:
            self.hwc[out] = (src[3], src[1], src[2])
        return out

    def _permute(self, node):
        """``movedim`` / ``permute``: the identity (``movedim(1, -1)`` of a 2-D tensor), or a map's
        channels moved last, which only a flatten may read (Keras' Flatten and Dense do this)."""
        src = node.args[0]
        rank = len(self.shapes[src.name])
        order = _permutation(node, rank, self.values)
        if order == tuple(range(rank)) and src.name in self.channels_last:
            self.channels_last[node.name] = self.channels_last[src.name]
        elif order == tuple(range(rank)):
            self.alias[node.name] = self._arg(node, src, passes_on=True)
        elif order == (0, 2, 3, 1):
            self.channels_last[node.name] = self._arg(node, src)
        else:
            raise EngineError(
                f"{_describe(node)}: dims to {order}; the engine moves a map's channels last only to flatten it"
            )

    # -- functions and methods -------------------------------------------------------------------

    def _function(self, node):
        t = node.target
        name = _target_name(node)
        method = node.op == "call_method"
        if node.name not in self.shapes:
            return  # shape arithmetic (x.size(0), x.shape): feeds view/reshape/pad, which use values
        if t in (operator.add, operator.iadd, torch.add, operator.mul, operator.imul, torch.mul) or (
            method and t in ("add", "add_", "mul", "mul_")
        ):
            return self._binary_op(
                node, "mul" if t in (operator.mul, operator.imul, torch.mul, "mul", "mul_") else "add"
            )
        if t is torch.cat or t is torch.concat:
            return self._concat(node)
        if t is F.pad:
            return self._pad(node)
        if t is operator.getitem:
            return self._getitem(node)
        if t in (torch.movedim, torch.permute) or (method and t in ("movedim", "permute")):
            return self._permute(node)
        flatten = t is torch.flatten or (method and t in ("flatten", "view", "reshape"))
        src = node.args[0].name if node.args and isinstance(node.args[0], fx.Node) else None
        if flatten and src in self.channels_last:
            return self._flatten(node, self.channels_last[src], channels_last=True)
        x = self._arg(node, node.args[0]) if node.args else None
        if flatten:
            return self._flatten(node, x)
        elementwise = _FUNCTIONS.get(t) or (_METHODS.get(t) if method else None)
        if elementwise is not None:
            return self._elementwise(node, elementwise, x)
        if t in (torch.softmax, F.softmax) or (method and t == "softmax"):
            return self._softmax(
                node, x, _resolve(node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None), self.values)
            )
        if t is F.adaptive_avg_pool2d:
            return self._gap(node, x, node.args[1] if len(node.args) > 1 else node.kwargs["output_size"], keepdims=True)
        if t is torch.mean or (method and t == "mean"):
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
            src = self.shapes[node.args[0].name]
            dims = sorted(d % len(src) for d in (dims if isinstance(dims, (tuple, list)) else [dims]))
            if len(src) == 4 and dims == [2, 3]:
                return self._add("gap", node, [x], name=node.name, keepdims=bool(keep))
            raise EngineError(
                f"op {node.name!r}: mean over dims {dims}; the engine supports the spatial mean (dims 2, 3) only"
            )
        if t is F.max_pool2d or t is F.avg_pool2d:
            raise EngineError(f"op {node.name!r} ({name}): use nn.MaxPool2d / nn.AvgPool2d modules")
        raise EngineError(f"op {node.name!r} ({name}){_within(node)} is not supported by the engine")

    def _elementwise(self, node, kind, x):
        """relu, sigmoid, tanh, clamp as functions or methods (clamp's bounds from its arguments)."""
        if kind != "hardtanh":
            return self._add(kind, node, [x], name=node.name)
        lo = node.kwargs.get("min", node.args[1] if len(node.args) > 1 else None)
        hi = node.kwargs.get("max", node.args[2] if len(node.args) > 2 else None)
        if node.target is F.hardtanh:
            lo = -1.0 if lo is None else lo
            hi = 1.0 if hi is None else hi
        lo, hi = _resolve(lo, self.values), _resolve(hi, self.values)
        if not all(v is None or isinstance(v, (int, float)) for v in (lo, hi)):
            raise EngineError(f"op {node.name!r} ({_target_name(node)}): clamp bounds must be numbers")
        bounds = dict(min=float("-inf") if lo is None else float(lo), max=float("inf") if hi is None else float(hi))
        return self._add("hardtanh", node, [x], name=node.name, **bounds)

    def _binary_op(self, node, kind):
        """add / mul of two tensors (mul: one may be (N, C, 1, 1) or (N, C) -> broadcast) or of a
        tensor and a number."""
        if len(node.args) != 2 or node.kwargs:
            raise EngineError(f"op {node.name!r} ({_target_name(node)}): the engine {kind}s two operands only")
        a, b = node.args
        if not isinstance(a, fx.Node):
            a, b = b, a
        x = self._arg(node, a)
        if not isinstance(b, fx.Node):
            if not isinstance(b, (int, float)):
                raise EngineError(f"op {node.name!r}: {kind} by {b!r}; the engine takes a tensor or a number")
            return self._add(kind + "_scalar", node, [x], name=node.name, value=float(b))
        shapes = self.shapes[a.name], self.shapes[b.name]
        out = self.shapes[node.name]
        if shapes[0] != shapes[1] and not (kind == "mul" and _broadcasts_per_channel(shapes, out)):
            raise EngineError(
                f"op {node.name!r}: {kind} of shapes {shapes[0]} and {shapes[1]}; the engine {kind}s equal "
                f"shapes{' or a per-channel (N, C, 1, 1) factor' if kind == 'mul' else ''}"
            )
        return self._add(kind, node, [x, self._arg(node, b)], name=node.name)

    def _softmax(self, node, x, dim):
        """Softmax over the channels (dim 1, the last axis of the engine's NHWC); else a refusal."""
        rank = len(self.shapes[node.name])
        if not isinstance(dim, int) or dim % rank != 1:
            module = node.op == "call_module"
            what = f"layer {node.target!r} (Softmax)" if module else f"op {node.name!r} (softmax){_within(node)}"
            raise EngineError(f"{what}: softmax over dim {dim}; the engine takes it over the channels (dim 1)")
        return self._add("softmax", node, [x], name=node.name)

    def _concat(self, node):
        parts = node.args[0]
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        if not isinstance(parts, (list, tuple)) or not parts:
            raise EngineError(f"op {node.name!r} (cat): expected a list of tensors")
        rank = len(self.shapes[node.name])
        if dim % rank != 1:
            raise EngineError(
                f"op {node.name!r} (cat): concatenation along dim {dim}; the engine concatenates channels (dim 1)"
            )
        return self._add("concat", node, [self._arg(node, v) for v in parts], name=node.name)

    def _pad(self, node):
        x = self._arg(node, node.args[0])
        pads = _resolve(node.kwargs.get("pad", node.args[1] if len(node.args) > 1 else None), self.values)
        mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
        value = _resolve(node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None), self.values)
        widths = _pad_widths(pads, len(self.shapes[node.name]))
        if widths is None or mode != "constant":
            raise EngineError(
                f"op {node.name!r} (pad): pad={pads!r} mode={mode!r}; the engine pads with a constant, "
                f"by non-negative amounts, not the batch axis"
            )
        return self._add("pad", node, [x], name=node.name, widths=widths, value=float(value or 0.0))

    def _getitem(self, node):
        """``x[:, :, None, None]`` (a (N, C) tensor as (N, C, 1, 1)); other indexing is refused."""
        src, index = node.args
        full = slice(None, None, None)
        if len(self.shapes.get(src.name, ())) == 2 and index == (full, full, None, None):
            return self._add("expand_hw", node, [self._arg(node, src)], name=node.name)
        raise EngineError(f"op {node.name!r} (getitem): indexing {index!r}; the engine takes x[:, :, None, None] only")


def _broadcasts_per_channel(shapes, out) -> bool:
    """Whether two 4-D shapes are a map and a per-channel factor (N, C, 1, 1) (in either order)."""
    a, b = shapes
    return (
        len(a) == len(b) == 4
        and tuple(out) in (tuple(a), tuple(b))
        and min(a[2:] + b[2:]) >= 1
        and (a[2:] == (1, 1) or b[2:] == (1, 1))
        and a[:2] == b[:2]
    )


_FUNCTIONS = {
    F.relu: "relu",
    torch.relu: "relu",
    torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid",
    torch.tanh: "tanh",
    F.tanh: "tanh",
    torch.clamp: "hardtanh",
    torch.clip: "hardtanh",
    F.hardtanh: "hardtanh",
}
_METHODS = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "clamp": "hardtanh", "clip": "hardtanh"}


# --------------------------------------------------------------------------------- lowering


class _OpGraph:
    """The traced ops with their readers: what every lowering (the engine's, LCE's) asks of the
    graph before it writes an op, and which binary layers write packed sign bits (the fusions)."""

    def __init__(self, ops, output):
        self.ops = ops
        self.output = output
        self.by_out = {op.out: op for op in ops}
        self.uses: dict[str, int] = {}
        for op in ops:
            for v in op.inputs:
                self.uses[v] = self.uses.get(v, 0) + 1
        self.uses[output] = self.uses.get(output, 0) + 1

    def readers(self, value) -> list:
        return [c for c in self.ops if value in c.inputs]

    def sole_reader(self, op, kind):
        """The op of ``kind`` that alone reads ``op``'s output (not the model's output), else None."""
        readers = self.readers(op.out)
        if len(readers) != 1 or readers[0].kind != kind or self.uses[op.out] != 1:
            return None
        return readers[0]

    # fusion: binary layer -> [maxpool] -> [bn] -> [maxpool | flatten] -> sign
    def find_fusions(self):
        """{binary layer's output: plan}: the layers whose output only feeds signs read by binary
        layers, through max-pool / batch norm / flatten (``chain``), with the ``bn`` and ``sign``."""
        fused = {}
        for s in self.ops:
            if s.kind != "sign":
                continue
            chain = []
            cur = s.inputs[0]
            readers = self.readers(s.out)
            if not readers or not all(
                c.kind in ("conv", "linear") and c.attrs["binary_input"] and c.attrs["kernel"] is not None
                for c in readers
            ):
                continue  # something reads the signs as floats: keep the float path
            while cur in self.by_out and self.uses.get(cur) == 1:
                prod = self.by_out[cur]
                if prod.kind in ("conv", "linear"):
                    if prod.attrs["binary_input"] and prod.attrs["kernel"] is not None:
                        plan = self._plan(prod, chain[::-1], s)
                        if plan is not None:
                            fused[prod.out] = plan
                    break
                if prod.kind not in ("maxpool", "bn", "flatten"):
                    break
                chain.append(prod)
                cur = prod.inputs[0]
        return fused

    def _plan(self, layer, chain, sign_op):
        bns = [c for c in chain if c.kind == "bn"]
        if len(bns) > 1 or layer.attrs["groups"] != 1:
            return None
        seen_flatten = False
        for c in chain:
            if c.kind == "flatten":
                seen_flatten = True
            elif seen_flatten:  # pooling or batch norm after a flatten: keep the float path
                return None
        bn = bns[0] if bns else None
        if bn is not None and bn.module.num_features != layer.attrs["weight"].shape[0]:
            return None
        return {"chain": chain, "bn": bn, "sign": sign_op}

    @staticmethod
    def folded_into(fused) -> set[int]:
        """ids of the ops a fused layer writes itself (its chain and its sign): not lowered alone."""
        skip = set()
        for plan in fused.values():
            skip.update(id(c) for c in plan["chain"])
            skip.add(id(plan["sign"]))
        return skip

    @staticmethod
    def thresholds(layer, plan):
        """(sgn, thr, increasing) of ``sign_thresholds`` for a fused layer and its plan's batch norm."""
        a = layer.attrs
        o = a["weight"].shape[0]
        k = int(np.prod(a["weight"].shape[1:]))
        bn = plan["bn"].module if plan["bn"] is not None else None
        return sign_thresholds(layer.name, k, o, alpha=a["kernel"][1], bias=a["bias"], bn=bn, rank=len(layer.shape))


class _Lowering(_OpGraph):
    """Float-semantics ops -> engine ops (JSON-able dicts) and arrays."""

    def __init__(self, ops, output):
        super().__init__(ops, output)
        self.out_ops: list[dict] = []
        self.arrays: dict[str, np.ndarray] = {}
        self.env: dict[str, tuple] = {"input": ("float", "input", None)}
        self.cache: dict[tuple, str] = {}
        self.n_values = 0

    # value helpers
    def _new(self, prefix="v"):
        self.n_values += 1
        return f"{prefix}{self.n_values}"

    def emit(self, kind, inputs, name="", arrays=None, **attrs):
        idx = len(self.out_ops)
        out = self._new()
        self.out_ops.append({"op": kind, "name": name, "in": list(inputs), "out": out, **attrs})
        for k, v in (arrays or {}).items():
            self.arrays[f"{idx}.{k}"] = v
        return out

    def float_of(self, value):
        kind, vid, meta = self.env[value]
        if kind == "float":
            return vid
        if kind in ("sign", "levels"):  # a quantizer of a float value, needed as floats
            key = (kind, vid)
            if key not in self.cache:
                attrs = {"levels": meta["levels"]} if kind == "levels" else {}
                self.cache[key] = self.emit(kind, [vid], **attrs)
            return self.cache[key]
        key = ("unpack", vid)
        if key not in self.cache:
            self.cache[key] = self.emit("unpack", [vid], channels=meta["width"])
        return self.cache[key]

    def bits_of(self, value, consumer, groups=1):
        """Packed sign bits of ``value`` for a binary layer of ``groups`` groups, and their layout."""
        kind, vid, meta = self.env[value]
        if kind == "bits":
            if groups == 1 or (meta["channels"] // groups) % 64 == 0:
                return vid, meta  # each group's channels already start a word
            kind, vid, meta = "sign", self.float_of(value), {"shape": None, "channels": meta["channels"]}
        if kind != "sign":
            raise EngineError(f"layer {consumer!r}: binary input is not a sign() value")
        src_shape = meta["shape"]
        key = ("pack", vid, groups)
        if key not in self.cache:
            self.cache[key] = self.emit("pack", [vid], **({"groups": groups} if groups > 1 else {}))
        if src_shape is None:
            return self.cache[key], {"positions": 1, "channels": meta["channels"]}
        if len(src_shape) == 4:
            return self.cache[key], {"positions": src_shape[2] * src_shape[3], "channels": src_shape[1]}
        return self.cache[key], {"positions": 1, "channels": src_shape[1]}

    def planes_of(self, value, consumer):
        """Packed bit-planes of a multi-bit (DoReFa) activation, for a layer with a 1-bit kernel."""
        kind, vid, meta = self.env[value]
        if kind != "levels":
            raise EngineError(f"layer {consumer!r}: multi-bit input is not a DoReFa activation")
        key = ("planes", vid, meta["levels"])
        if key not in self.cache:
            self.cache[key] = self.emit("pack_levels", [vid], levels=meta["levels"], planes=meta["planes"])
        return self.cache[key], {"positions": 1, "channels": meta["shape"][1]}

    def run(self):
        fused = self.find_fusions()
        skip = self.folded_into(fused)
        for op in self.ops:
            if id(op) in skip:
                continue
            if op.out in fused:
                self._fused(op, fused[op.out])
                continue
            getattr(self, "_" + op.kind)(op)
        out = self.float_of(self.output)
        return self.out_ops, self.arrays, out

    # -- lowering of each op kind -----------------------------------------------------------------

    def _sign(self, op):
        kind, vid, meta = self.env[op.inputs[0]]
        if kind == "levels":
            kind, vid = "float", self.float_of(op.inputs[0])
        if kind == "float":
            shape = self.by_out[op.inputs[0]].shape if op.inputs[0] in self.by_out else None
            self.env[op.out] = ("sign", vid, {"shape": op.shape or shape})
        else:  # sign of a sign (or of bits) is itself
            self.env[op.out] = self.env[op.inputs[0]]

    def _binary_weights(self, op, in_meta):
        """Pack the kernel along input channels in the engine's layout."""
        bits = op.attrs["kernel"][0]
        if op.kind == "conv":  # (O, C, kh, kw) -> (O, kh, kw, words)
            return pack_bool(bits.transpose(0, 2, 3, 1))
        o = bits.shape[0]  # linear: (O, C * P) in torch's flatten order -> (O, P * words)
        p, c = in_meta["positions"], in_meta["channels"]
        return pack_bool(bits.reshape(o, c, p).transpose(0, 2, 1)).reshape(o, -1)

    def _binary_layer(self, op, mode_arrays, mode):
        a = op.attrs
        planes = a["planes"]
        if planes:
            in_bits, in_meta = self.planes_of(op.inputs[0], op.name)
        else:
            in_bits, in_meta = self.bits_of(op.inputs[0], op.name, a["groups"])
        arrays = {"weight": self._binary_weights(op, in_meta), **mode_arrays}
        w = a["weight"]
        if op.kind == "conv":
            geometry = dict(kernel=a["kernel_size"], stride=a["stride"], dilation=a["dilation"], padding=a["padding"])
            if planes:
                return self.emit("bconv2d_planes", [in_bits], op.name, arrays, mode=mode, planes=planes, **geometry)
            return self.emit(
                "bconv2d",
                [in_bits],
                op.name,
                arrays,
                mode=mode,
                in_channels=int(w.shape[1]),
                out_channels=int(w.shape[0]),
                pad_value=int(a["pad_value"]),
                **({"groups": a["groups"]} if a["groups"] > 1 else {}),
                **geometry,
            )
        if planes:
            return self.emit("bdense_planes", [in_bits], op.name, arrays, mode=mode, planes=planes)
        layout = {"positions": in_meta["positions"]} if in_meta["positions"] > 1 else {}  # a flattened map
        return self.emit(
            "bdense",
            [in_bits],
            op.name,
            arrays,
            mode=mode,
            in_features=int(w.shape[1]),
            out_features=int(w.shape[0]),
            **layout,
        )

    def _binary_float(self, op):
        """A binary layer with a float output ``d * mul + add``: its kernel scale (divided by the
        levels of multi-bit inputs) and bias, and a following batch norm nothing else reads."""
        a = op.attrs
        o = a["weight"].shape[0]
        alpha = a["kernel"][1]
        mul = alpha if alpha is not None else np.ones(o, np.float32)
        if a["planes"]:
            mul = (mul / np.float32(2 ** a["planes"] - 1)).astype(np.float32)
        add = a["bias"] if a["bias"] is not None else np.zeros(o, np.float32)
        bn = self.sole_reader(op, "bn")
        if bn is not None and bn.module.num_features == o:
            mul = mul * bn.attrs["mul"]
            add = add * bn.attrs["mul"] + bn.attrs["add"]
            self._absorbed_bn = getattr(self, "_absorbed_bn", set()) | {id(bn)}
        else:
            bn = None
        arrays = {"mul": mul.astype(np.float32), "add": np.asarray(add, np.float32)}
        out = self._binary_layer(op, arrays, "float")
        self.env[op.out] = ("float", out, None)
        if bn is not None:
            self.env[bn.out] = ("float", out, None)

    def _conv(self, op):
        a = op.attrs
        if a["kernel"] is not None and (a["binary_input"] or a["planes"]):
            return self._binary_float(op)
        x = self.float_of(op.inputs[0])
        arrays = self._float_weights(op)
        if op.kind == "conv":
            out = self.emit(
                "conv2d",
                [x],
                op.name,
                arrays,
                kernel=a["kernel_size"],
                stride=a["stride"],
                dilation=a["dilation"],
                padding=a["padding"],
                pad_value=a["pad_value"],
                weight_shape=list(a["weight"].shape),
                **({"groups": a["groups"]} if a["groups"] > 1 else {}),
            )
        else:
            out = self.emit("dense", [x], op.name, arrays, weight_shape=list(a["weight"].shape))
        self.env[op.out] = ("float", out, None)

    _linear = _conv

    def _float_weights(self, op):
        a = op.attrs
        arrays = {}
        if a["kernel"] is not None:  # 1-bit kernel on a real input: still 1 bit per weight in the file
            bits, alpha = a["kernel"]
            arrays["weight_bits"] = np.packbits(bits.reshape(-1), bitorder="little")
            if alpha is not None:
                arrays["alpha"] = alpha
        else:
            arrays["weight"] = a["weight"]
        if a["bias"] is not None:
            arrays["bias"] = a["bias"]
        return arrays

    def _bn(self, op):
        if id(op) in getattr(self, "_absorbed_bn", set()):
            return
        x = self.float_of(op.inputs[0])
        out = self.emit("scale_shift", [x], op.name, {"mul": op.attrs["mul"], "add": op.attrs["add"]})
        self.env[op.out] = ("float", out, None)

    def _maxpool(self, op):
        x = self.float_of(op.inputs[0])
        a = op.attrs
        out = self.emit(
            "maxpool2d",
            [x],
            op.name,
            kernel=a["kernel"],
            stride=a["stride"],
            padding=a["padding"],
            ceil_mode=a["ceil_mode"],
        )
        self.env[op.out] = ("float", out, None)

    def _avgpool(self, op):
        x = self.float_of(op.inputs[0])
        out = self.emit("avgpool2d", [x], op.name, **op.attrs)
        self.env[op.out] = ("float", out, None)

    def _gap(self, op):
        out = self.emit("global_avgpool", [self.float_of(op.inputs[0])], op.name, **op.attrs)
        self.env[op.out] = ("float", out, None)

    def _flatten(self, op):
        kind, vid, meta = self.env[op.inputs[0]]
        if kind == "bits" and meta.get("spatial"):
            out = self.emit("flatten_bits", [vid], op.name)
            self.env[op.out] = (
                "bits",
                out,
                {"positions": meta["positions"], "channels": meta["channels"], "width": meta["width"]},
            )
            return
        out = self.emit("flatten", [self.float_of(op.inputs[0])], op.name)
        self.env[op.out] = ("float", out, None)

    def _simple(self, op, kind, **attrs):
        out = self.emit(kind, [self.float_of(v) for v in op.inputs], op.name, **attrs)
        self.env[op.out] = ("float", out, None)

    def _add(self, op):
        self._simple(op, "add")

    def _relu(self, op):
        self._simple(op, "relu")

    def _hardtanh(self, op):
        self._simple(op, "hardtanh", **op.attrs)

    def _levels(self, op):
        meta = {"levels": op.attrs["levels"], "planes": op.attrs["planes"], "shape": op.shape}
        self.env[op.out] = ("levels", self.float_of(op.inputs[0]), meta)

    def _prelu(self, op):
        out = self.emit("prelu", [self.float_of(op.inputs[0])], op.name, {"slope": op.attrs["alpha"]})
        self.env[op.out] = ("float", out, None)

    def _pad(self, op):
        widths = op.attrs["widths"]
        if len(widths) == 4:  # NCHW -> NHWC
            widths = [widths[0], widths[2], widths[3], widths[1]]
        self._simple(op, "pad", widths=widths, value=op.attrs["value"])

    def _concat(self, op):
        self._simple(op, "concat")

    def _mul(self, op):
        self._simple(op, "mul")

    def _add_scalar(self, op):
        self._simple(op, "add_scalar", **op.attrs)

    def _mul_scalar(self, op):
        self._simple(op, "mul_scalar", **op.attrs)

    def _sigmoid(self, op):
        self._simple(op, "sigmoid")

    def _softmax(self, op):
        self._simple(op, "softmax")

    def _tanh(self, op):
        self._simple(op, "tanh")

    def _expand_hw(self, op):
        self._simple(op, "expand_hw")

    def _fused(self, layer, plan):
        """Binary layer writing packed sign bits: thresholds, then max-pool / flatten on bits."""
        o = layer.attrs["weight"].shape[0]
        sgn, thr, increasing = self.thresholds(layer, plan)
        vid = self._binary_layer(layer, {"sgn": sgn.astype(np.int8), "thr": thr.astype(np.int32)}, "bits")
        conv = layer.kind == "conv"
        shape = layer.shape
        meta = {"positions": shape[2] * shape[3] if conv else 1, "channels": o, "width": o, "spatial": conv}
        after_bn = False
        for c in plan["chain"]:
            if c.kind == "bn":
                after_bn = True
            elif c.kind == "maxpool":
                # max of dots seen through f: AND of sign bits where f increases, OR where it
                # decreases; after the batch norm the max is taken on f itself: AND everywhere
                and_ch = np.ones(o, bool) if after_bn else increasing
                mask = pack_bool(and_ch[None, :])[0]
                vid = self.emit(
                    "maxpool2d_bits",
                    [vid],
                    c.name,
                    {"and_mask": mask},
                    kernel=c.attrs["kernel"],
                    stride=c.attrs["stride"],
                    padding=c.attrs["padding"],
                    ceil_mode=c.attrs["ceil_mode"],
                )
                meta = dict(meta, positions=c.shape[2] * c.shape[3])
            elif c.kind == "flatten":
                vid = self.emit("flatten_bits", [vid], c.name)
                meta = dict(meta, spatial=False)
        self.env[plan["sign"].out] = ("bits", vid, meta)


def trace_ops(model: nn.Module, input_size, ranks=None) -> tuple[list[_Op], str, tuple[int, ...]]:
    """(ops, output, size): ``model`` traced in eval mode (its mode restored after) into the
    float-semantics ops every exporter lowers, for inputs of ``input_size``: positive ints, of a
    rank in ``ranks`` where given."""
    try:
        size = tuple(operator.index(v) for v in input_size)
    except TypeError:
        size = ()
    if len(size) < 2 or min(size) < 1 or (ranks is not None and len(size) not in ranks):
        raise EngineError(f"input_size={input_size!r} must be (N, C, H, W) or (N, features) of positive ints")
    was_training = model.training
    model.eval()
    try:
        ops, output = _GraphBuilder(model, size).trace()
    finally:
        model.train(was_training)
    return ops, output, size


def build(model: nn.Module, input_size) -> tuple[dict, dict[str, np.ndarray]]:
    """The engine graph (JSON-able dict) and arrays of ``model`` for inputs of ``input_size``."""
    ops, output, input_size = trace_ops(model, input_size)
    out_ops, arrays, out = _Lowering(ops, output).run()
    graph = {
        "format": _bits.FORMAT,
        "version": _bits.VERSION,
        "model": type(model).__name__,
        "input": {"name": "input", "shape": list(input_size)},
        "output": out,
        "ops": out_ops,
    }
    return graph, arrays


def _binary_bits_in_file(graph, arrays) -> int:
    n = 0
    for i, op in enumerate(graph["ops"]):
        for key in ("weight", "weight_bits"):
            arr = arrays.get(f"{i}.{key}")
            if arr is not None and (op["op"] in ("bconv2d", "bdense") or key == "weight_bits"):
                n += arr.nbytes * 8
    return n


def export(model: nn.Module, path, input_size) -> dict:
    """Write ``model`` (eval mode) for inputs of ``input_size`` to ``path``; returns a report.

    The report has ``file_bytes``, ``binary_weight_bits`` (kernel bits as stored, with the zero
    padding of the last word), ``summary_bytes`` and ``size_ratio`` (file / ``onebit.summary``'s
    model size) when ``onebit.summary`` is available, and ``ops`` (the engine op count).
    """
    graph, arrays = build(model, input_size)
    size = _bits.save(path, graph, arrays)
    report = {
        "path": str(path),
        "file_bytes": int(size),
        "ops": len(graph["ops"]),
        "binary_weight_bits": _binary_bits_in_file(graph, arrays),
    }
    summary_bits = _summary_bits(model, input_size)
    if summary_bits:
        report["summary_bytes"] = summary_bits / 8
        report["size_ratio"] = size / (summary_bits / 8)
    return report


def _summary_bits(model, input_size):
    """Model size in bits from ``onebit.summary`` (None if it is unavailable or fails)."""
    try:
        from ..model_summary import summary
    except ImportError:
        return None
    try:
        s = summary(model, input_size=tuple(input_size), print_fn=None)
    except Exception:  # noqa: BLE001 - the size comparison is informative only
        return None
    for key in ("memory_bits", "total_memory_bits"):
        v = getattr(s, key, None)
        if v is None and isinstance(s, dict):
            v = s.get(key)
        if v is not None:
            return float(v)
    return None
