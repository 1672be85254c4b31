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
_LEAVES = (QuantLayer, q.Quantizer, Pool2dSame)


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


class _GraphBuilder:
    """Turns the traced torch graph into the list of float-semantics ``_Op``s."""

    def __init__(self, model, input_size):
        self.model = model
        self.modules = dict(model.named_modules())
        self.ops: list[_Op] = []
        self.shapes: dict[str, tuple] = {}
        self.input_size = tuple(int(v) for v in input_size)
        self.alias: dict[str, str] = {}

    def trace(self):
        try:
            graph = _Tracer().trace(self.model)
        except Exception as e:  # noqa: BLE001 - any tracing failure is a refusal
            raise EngineError(f"cannot trace {type(self.model).__name__} with torch.fx: {e}") from None
        gm = fx.GraphModule(self.model, graph)
        try:
            with torch.no_grad():
                ShapeProp(gm).propagate(torch.zeros(self.input_size))
        except Exception as e:  # noqa: BLE001 - torch's shape errors, wrapped by fx
            cause = e.__cause__ or e
            reason = next((t.strip() for t in str(cause).splitlines() if t.strip()), type(cause).__name__)
            raise EngineError(
                f"input_size={self.input_size}: {type(self.model).__name__} does not run on it ({reason})"
            ) from None
        self.output = None
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

    def _arg(self, node, a, what="input"):
        if not isinstance(a, fx.Node) or (a.name not in self.shapes and a.name not in self.alias):
            raise EngineError(f"layer {node.target!s}: {what} {a!r} is not a tensor of the graph")
        return self.alias.get(a.name, a.name)

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
        if isinstance(m, QuantDepthwiseConv2d) or (isinstance(m, nn.Conv2d) and m.groups != 1):
            raise EngineError(
                f"layer {name!r} ({type(m).__name__}): grouped/depthwise convolutions "
                f"are not supported; the engine runs groups=1"
            )
        if isinstance(m, (QuantLinear, QuantConv2d, nn.Linear, nn.Conv2d)):
            return self._layer(node, m, x, in_shape)
        if isinstance(m, QuantLayer) or isinstance(
            m, (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
        ):
            raise EngineError(
                f"layer {name!r} ({type(m).__name__}) is not supported; the engine runs "
                f"Conv2d/Linear (quantized or not), pooling, batch norm and adds"
            )
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if len(in_shape) not in (2, 4):
                raise EngineError(f"layer {name!r}: batch norm on a {len(in_shape)}-D tensor")
            try:
                mul, add = _bn_affine(m)
            except EngineError as e:
                raise EngineError(f"layer {name!r}: {e}") from None
            return self._add("bn", node, [x], m, mul=mul, add=add)
        if isinstance(m, nn.MaxPool2d):
            if m.return_indices or nn.modules.utils._pair(m.dilation) != (1, 1):
                raise EngineError(f"layer {name!r}: max-pool with dilation or indices is not supported")
            k, s, p = _pool_params(m.kernel_size, m.stride, m.padding)
            return self._add("maxpool", node, [x], kernel=k, stride=s, padding=p, ceil_mode=bool(m.ceil_mode))
        if isinstance(m, nn.AvgPool2d):
            k, s, p = _pool_params(m.kernel_size, m.stride, m.padding)
            return self._add(
                "avgpool",
                node,
                [x],
                kernel=k,
                stride=s,
                padding=p,
                ceil_mode=bool(m.ceil_mode),
                count_include_pad=bool(m.count_include_pad),
                divisor_override=m.divisor_override,
            )
        if isinstance(m, Pool2dSame):
            k, st = int(m.kernel_size), int(m.stride)
            pads = [list(same_padding(int(n), k, st, 1)) for n in in_shape[2:]]
            if m.kind == "max":
                return self._add("maxpool", node, [x], kernel=[k, k], stride=[st, st], padding=pads, ceil_mode=False)
            return self._add(
                "avgpool",
                node,
                [x],
                kernel=[k, k],
                stride=[st, st],
                padding=pads,
                ceil_mode=False,
                count_include_pad=False,
                divisor_override=None,
            )
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return self._gap(node, x, m.output_size, keepdims=True)
        if isinstance(m, nn.Flatten):
            return self._flatten(node, x)
        if isinstance(m, nn.ReLU):
            return self._add("relu", node, [x])
        if isinstance(m, nn.Hardtanh):
            return self._add("hardtanh", node, [x], min=float(m.min_val), max=float(m.max_val))
        if isinstance(m, (nn.Identity, nn.Dropout, nn.Dropout2d)):
            self.alias[node.name] = x
            return
        if isinstance(m, q.Quantizer) or callable(m) and q.precision_of(m) is not None:
            if not q.is_sign(m):
                raise EngineError(
                    f"layer {name!r}: quantizer {_qname(m)} is not a sign (+/-1) "
                    f"quantizer; the engine runs sign activations only"
                )
            return self._add("sign", node, [x])
        raise EngineError(f"layer {name!r} ({type(m).__name__}) is not supported by the engine")

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
        binary_input = False
        if iq is not None:
            if not q.is_sign(iq):
                raise EngineError(
                    f"layer {name!r}: input_quantizer {_qname(iq)} is not a sign "
                    f"(+/-1) quantizer; the engine runs sign or real-valued inputs"
                )
            binary_input = True
        kernel = _binary_kernel(m, name) if isinstance(m, QuantLayer) else None
        pad_value = float(getattr(m, "pad_values", 0.0))
        attrs = dict(
            binary_input=binary_input,
            kernel=kernel,
            bias=None if m.bias is None else m.bias.detach().float().numpy().copy(),
            weight=m.weight.detach().float().numpy().copy(),
        )
        if conv:
            pads = _conv_pads(m, in_shape[2:])
            attrs.update(
                kernel_size=list(m.kernel_size),
                stride=list(m.stride),
                dilation=list(m.dilation),
                padding=[list(p) for p in pads],
                pad_value=pad_value,
            )
            if binary_input and kernel is not None and pad_value not in (0.0, 1.0) and any(v for p in pads for v in p):
                raise EngineError(
                    f"layer {name!r}: pad_values={pad_value} on a binary input; "
                    f"the engine pads binary inputs with 0 or 1"
                )
        if binary_input:
            x = self._add("sign", node, [x], out=node.name + "__sign", name=name, shape=in_shape)
        return self._add("conv" if conv else "linear", node, [x], m, **attrs)

    def _gap(self, node, x, output_size, keepdims):
        if tuple(nn.modules.utils._pair(output_size)) != (1, 1):
            raise EngineError(
                f"layer {node.target!s}: adaptive pooling to {output_size}; the engine "
                f"supports global pooling (output size 1) only"
            )
        return self._add("gap", node, [x], keepdims=keepdims)

    def _flatten(self, node, x):
        shape = self.shapes[node.name]
        src = self.shapes[node.args[0].name]
        if len(shape) != 2 or shape[0] != src[0]:
            raise EngineError(
                f"layer {node.target!s}: reshape {src} -> {shape}; the engine supports flattening to (N, features) only"
            )
        if len(src) == 2:
            self.alias[node.name] = x
            return
        return self._add("flatten", node, [x])

    # -- functions and methods -------------------------------------------------------------------

    def _function(self, node):
        t = node.target
        name = t if isinstance(t, str) else getattr(t, "__name__", str(t))
        tensor_args = [a for a in node.args if isinstance(a, fx.Node)]
        if node.name not in self.shapes:
            return  # shape arithmetic (x.size(0), x.shape): feeds view/reshape, which use shapes
        if t in (operator.add, operator.iadd, torch.add) or (node.op == "call_method" and t in ("add", "add_")):
            if len(tensor_args) != 2 or len(node.args) != 2 or node.kwargs:
                raise EngineError(f"op {node.name!r} ({name}): the engine adds two tensors only")
            a, b = (self._arg(node, v) for v in node.args)
            if self.shapes[node.args[0].name] != self.shapes[node.args[1].name]:
                raise EngineError(f"op {node.name!r}: add with broadcasting is not supported")
            return self._add("add", node, [a, b], name=node.name)
        x = self._arg(node, node.args[0]) if node.args else None
        if t in (torch.flatten,) or (node.op == "call_method" and t in ("flatten", "view", "reshape")):
            return self._flatten(node, x)
        if t in (F.relu, torch.relu) or (node.op == "call_method" and t == "relu"):
            return self._add("relu", node, [x], name=node.name)
        if t is F.adaptive_avg_pool2d:
            return self._gap(node, x, node.args[1] if len(node.args) > 1 else node.kwargs["output_size"], keepdims=True)
        if t is torch.mean or (node.op == "call_method" and t == "mean"):
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
        raise EngineError(f"op {node.name!r} ({name}) is not supported by the engine")


# --------------------------------------------------------------------------------- lowering


class _Lowering:
    """Float-semantics ops -> engine ops (JSON-able dicts) and arrays."""

    def __init__(self, ops, output):
        self.ops = ops
        self.output = output
        self.by_out = {op.out: op for op in ops}
        self.uses: dict[str, int] = {}
        for op in ops:
            for v in op.inputs:
                self.uses[v] = self.uses.get(v, 0) + 1
        self.uses[output] = self.uses.get(output, 0) + 1
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
        if kind == "sign":  # sign of a float value, needed as floats
            key = ("sign", vid)
            if key not in self.cache:
                self.cache[key] = self.emit("sign", [vid])
            return self.cache[key]
        key = ("unpack", vid)
        if key not in self.cache:
            self.cache[key] = self.emit("unpack", [vid], channels=meta["width"])
        return self.cache[key]

    def bits_of(self, value, consumer):
        kind, vid, meta = self.env[value]
        if kind == "bits":
            return vid, meta
        if kind != "sign":
            raise EngineError(f"layer {consumer!r}: binary input is not a sign() value")
        src_shape = meta["shape"]
        key = ("pack", vid)
        if key not in self.cache:
            self.cache[key] = self.emit("pack", [vid])
        if len(src_shape) == 4:
            return self.cache[key], {"positions": src_shape[2] * src_shape[3], "channels": src_shape[1]}
        return self.cache[key], {"positions": 1, "channels": src_shape[1]}

    # fusion: binary layer -> [maxpool] -> [bn] -> [maxpool | flatten] -> sign
    def find_fusions(self):
        fused = {}
        for s in self.ops:
            if s.kind != "sign":
                continue
            chain = []
            cur = s.inputs[0]
            readers = [c for c in self.ops if s.out in c.inputs]
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
        if len(bns) > 1:
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

    def run(self):
        fused = self.find_fusions()
        skip = set()
        for plan in fused.values():
            skip.update(id(c) for c in plan["chain"])
            skip.add(id(plan["sign"]))
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
        in_bits, in_meta = self.bits_of(op.inputs[0], op.name)
        weight = self._binary_weights(op, in_meta)
        arrays = {"weight": weight, **mode_arrays}
        w = op.attrs["weight"]
        if op.kind == "conv":
            return self.emit(
                "bconv2d",
                [in_bits],
                op.name,
                arrays,
                mode=mode,
                in_channels=int(w.shape[1]),
                out_channels=int(w.shape[0]),
                kernel=op.attrs["kernel_size"],
                stride=op.attrs["stride"],
                dilation=op.attrs["dilation"],
                padding=op.attrs["padding"],
                pad_value=int(op.attrs["pad_value"]),
            )
        return self.emit(
            "bdense", [in_bits], op.name, arrays, mode=mode, in_features=int(w.shape[1]), out_features=int(w.shape[0])
        )

    def _conv(self, op):
        a = op.attrs
        if a["binary_input"] and a["kernel"] is not None:
            alpha = a["kernel"][1]
            o = a["weight"].shape[0]
            mul = alpha if alpha is not None else np.ones(o, np.float32)
            add = a["bias"] if a["bias"] is not None else np.zeros(o, np.float32)
            # fold a following batch norm that nothing else reads
            nxt = [c for c in self.ops if op.out in c.inputs]
            if len(nxt) == 1 and nxt[0].kind == "bn" and self.uses[op.out] == 1 and nxt[0].module.num_features == o:
                bn = nxt[0]
                mul = (mul * bn.attrs["mul"]).astype(np.float32)
                add = (add * bn.attrs["mul"] + bn.attrs["add"]).astype(np.float32)
                self._absorbed_bn = getattr(self, "_absorbed_bn", set()) | {id(bn)}
                out = self._binary_layer(op, {"mul": mul, "add": add}, "float")
                self.env[op.out] = ("float", out, None)
                self.env[bn.out] = ("float", out, None)
                return
            out = self._binary_layer(op, {"mul": mul.astype(np.float32), "add": add.astype(np.float32)}, "float")
            self.env[op.out] = ("float", out, None)
            return
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
            with torch.no_grad():
                w = op.module.quantized_weight() if isinstance(op.module, QuantLayer) else op.module.weight
            arrays["weight"] = w.detach().float().numpy().copy()
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

    def _fused(self, layer, plan):
        """Binary layer writing packed sign bits: thresholds, then max-pool / flatten on bits."""
        a = layer.attrs
        o = a["weight"].shape[0]
        k = int(np.prod(a["weight"].shape[1:]))
        sgn, thr, increasing = sign_thresholds(
            layer.name, k, o, alpha=a["kernel"][1], bias=a["bias"], bn=plan["bn"].module if plan["bn"] else None
        )
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


def build(model: nn.Module, input_size) -> tuple[dict, dict[str, np.ndarray]]:
    """The engine graph (JSON-able dict) and arrays of ``model`` for inputs of ``input_size``."""
    try:
        size = tuple(operator.index(v) for v in input_size)
    except TypeError:
        size = ()
    if len(size) < 2 or min(size) < 1:
        raise EngineError(f"input_size={input_size!r} must be (N, C, H, W) or (N, features) of positive ints")
    input_size = size
    was_training = model.training
    model.eval()
    try:
        ops, output = _GraphBuilder(model, input_size).trace()
        out_ops, arrays, out = _Lowering(ops, output).run()
    finally:
        model.train(was_training)
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
