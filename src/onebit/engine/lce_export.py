"""Export to Larq Compute Engine (LCE): a TFLite flatbuffer with LCE's binary ops, written from Python.

LCE runs TFLite files on ARM (phones, Raspberry Pi, ...) with its own custom ops for binary layers.
This module writes such a file with the TFLite schema bindings (``flatbuffers`` + ``tflite``); no
TensorFlow is needed. The model is traced and its batch norms are folded by the engine's exporter
(``onebit.engine.exporter``), then each op becomes:

- a binary layer (sign input, +/-1 or +/-alpha kernel): ``LceBconv2d`` with its filter bit-packed
  along the input channels into int32 words (bit i of word j = channel 32j+i, bit 1 = -1). A binary
  dense layer is a binary convolution too (1x1, or HxW over the flattened feature map), so it stays
  1 bit per weight. Where the next layer binarizes, batch norm, kernel scale and bias fold into
  LCE's output thresholds and the layer writes packed bits (channels with a negative batch-norm
  scale get their filter negated, which turns their threshold around); elsewhere they fold into
  its float post-activation multiplier and bias;
- max-pooling between a binary layer and the next sign: ``LceBMaxPool2d`` on the packed bits;
- a sign of real values: ``LceQuantize``; real values of a sign: ``LceDequantize``;
- everything else: TFLite builtins (CONV_2D, FULLY_CONNECTED, MUL + ADD for batch norm, pooling,
  MEAN, RELU, ADD, PAD, RESHAPE, TRANSPOSE).

Tensors are NHWC: the file's input is (N, H, W, C) float32 (or (N, features)); a flattened feature
map keeps TFLite's layout and the next dense layer's weights are reordered to torch's (C, H, W)
flatten order. What LCE cannot express is refused with a one-line ``EngineError`` naming the layer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from torch import nn

from ..kernels.bits import EngineError, pack_bool
from ..kernels.geometry import out_size, same_padding
from .exporter import _OpGraph, trace_ops

__all__ = ["export_lce", "build_lce"]

LCE_OPS = ("LceBconv2d", "LceQuantize", "LceDequantize", "LceBMaxPool2d")
_SAME, _VALID = 0, 1  # tflite.Padding


def _schema():
    """(flatbuffers, flexbuffers, tflite): the optional packages the writer needs."""
    try:
        import flatbuffers
        import tflite
        from flatbuffers import flexbuffers
    except ImportError:
        raise EngineError("export_lce needs the flatbuffers and tflite packages: pip install 'onebit[lce]'") from None
    return flatbuffers, flexbuffers, tflite


def pack_int32(bits: np.ndarray) -> np.ndarray:
    """LCE's bit packing of a boolean array along its last axis: int32 words, bit i of word j =
    element 32j+i, unused bits of the last word 0 (little-endian halves of ``pack_bool``'s words)."""
    c = bits.shape[-1]
    words = -(-c // 32)
    halves = pack_bool(bits).astype("<u8").view("<u4")
    return np.ascontiguousarray(halves[..., :words]).view("<i4").astype(np.int32)


# ------------------------------------------------------------------------------ the file writer


@dataclass
class _Tensor:
    shape: tuple
    dtype: np.dtype
    name: str
    buffer: int = 0


class _Writer:
    """Collects tensors, constant buffers and operators; ``serialize`` writes the TFLite file."""

    def __init__(self):
        self.tensors: list[_Tensor] = []
        self.buffers: list[bytes] = [b""]  # buffer 0: the empty sentinel every TFLite file has
        self.codes: list[tuple] = []
        self.ops: list[dict] = []

    def tensor(self, shape, dtype, name) -> int:
        self.tensors.append(_Tensor(tuple(int(v) for v in shape), np.dtype(dtype), name))
        return len(self.tensors) - 1

    def const(self, array, name) -> int:
        array = np.ascontiguousarray(array)
        if array.dtype not in (np.float32, np.int32):
            raise TypeError(f"constant {name!r}: dtype {array.dtype}")
        self.buffers.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
        idx = self.tensor(array.shape, array.dtype, name)
        self.tensors[idx].buffer = len(self.buffers) - 1
        return idx

    def op(self, code, inputs, outputs, options=None, custom=None):
        """``code``: a builtin's name (``"CONV_2D"``) or an LCE op's name; ``options``: (name of
        the builtin options table, {field: value}); ``custom``: the LCE op's option map."""
        key = (code, code in LCE_OPS)
        if key not in self.codes:
            self.codes.append(key)
        self.ops.append(
            dict(code=self.codes.index(key), inputs=list(inputs), outputs=list(outputs), options=options, custom=custom)
        )

    def serialize(self, inputs, outputs, description="onebit") -> bytes:
        flatbuffers, flexbuffers, tfl = _schema()
        b = flatbuffers.Builder(1 << 16)
        buffers = [self._buffer(b, tfl, data) for data in self.buffers]
        tensors = [self._tensor(b, tfl, t) for t in self.tensors]
        ops = [self._operator(b, tfl, flexbuffers, op) for op in self.ops]
        codes = [self._code(b, tfl, name, custom) for name, custom in self.codes]
        name = b.CreateString("main")
        vectors = [_offsets(b, v) for v in (tensors, ops)] + [_ints(b, v) for v in (inputs, outputs)]
        tfl.SubGraphStart(b)
        tfl.SubGraphAddTensors(b, vectors[0])
        tfl.SubGraphAddOperators(b, vectors[1])
        tfl.SubGraphAddInputs(b, vectors[2])
        tfl.SubGraphAddOutputs(b, vectors[3])
        tfl.SubGraphAddName(b, name)
        subgraph = tfl.SubGraphEnd(b)
        desc = b.CreateString(description)
        codes_v, subgraphs_v, buffers_v = _offsets(b, codes), _offsets(b, [subgraph]), _offsets(b, buffers)
        tfl.ModelStart(b)
        tfl.ModelAddVersion(b, 3)
        tfl.ModelAddOperatorCodes(b, codes_v)
        tfl.ModelAddSubgraphs(b, subgraphs_v)
        tfl.ModelAddDescription(b, desc)
        tfl.ModelAddBuffers(b, buffers_v)
        b.Finish(tfl.ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())

    @staticmethod
    def _buffer(b, tfl, data):
        vec = None
        if data:  # 16-byte aligned, as TFLite's own converter writes constants
            b.StartVector(1, len(data), 16)
            b.head -= len(data)
            b.Bytes[b.head : b.head + len(data)] = data
            vec = b.EndVector()
        tfl.BufferStart(b)
        if vec is not None:
            tfl.BufferAddData(b, vec)
        return tfl.BufferEnd(b)

    @staticmethod
    def _tensor(b, tfl, t):
        name = b.CreateString(t.name)
        shape = _ints(b, t.shape)
        tfl.TensorStart(b)
        tfl.TensorAddShape(b, shape)
        tfl.TensorAddType(b, tfl.TensorType.FLOAT32 if t.dtype == np.float32 else tfl.TensorType.INT32)
        tfl.TensorAddBuffer(b, t.buffer)
        tfl.TensorAddName(b, name)
        return tfl.TensorEnd(b)

    @staticmethod
    def _operator(b, tfl, flexbuffers, op):
        ins, outs = _ints(b, op["inputs"]), _ints(b, op["outputs"])
        custom = options = None
        if op["custom"] is not None:
            custom = b.CreateByteVector(bytes(flexbuffers.Dumps(op["custom"])) if op["custom"] else b"")
        if op["options"] is not None:
            table, fields = op["options"]
            getattr(tfl, f"{table}Start")(b)
            for field, value in fields.items():
                getattr(tfl, f"{table}Add{field}")(b, value)
            options = (getattr(tfl.BuiltinOptions, table), getattr(tfl, f"{table}End")(b))
        tfl.OperatorStart(b)
        tfl.OperatorAddOpcodeIndex(b, op["code"])
        tfl.OperatorAddInputs(b, ins)
        tfl.OperatorAddOutputs(b, outs)
        if options is not None:
            tfl.OperatorAddBuiltinOptionsType(b, options[0])
            tfl.OperatorAddBuiltinOptions(b, options[1])
        if custom is not None:
            tfl.OperatorAddCustomOptions(b, custom)
            tfl.OperatorAddCustomOptionsFormat(b, tfl.CustomOptionsFormat.FLEXBUFFERS)
        return tfl.OperatorEnd(b)

    @staticmethod
    def _code(b, tfl, name, custom):
        code = tfl.BuiltinOperator.CUSTOM if custom else getattr(tfl.BuiltinOperator, name)
        custom_name = b.CreateString(name) if custom else None
        tfl.OperatorCodeStart(b)
        tfl.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
        tfl.OperatorCodeAddBuiltinCode(b, code)
        if custom_name is not None:
            tfl.OperatorCodeAddCustomCode(b, custom_name)
        tfl.OperatorCodeAddVersion(b, 1)
        return tfl.OperatorCodeEnd(b)


def _ints(b, values):
    values = [int(v) for v in values]
    b.StartVector(4, len(values), 4)
    for v in reversed(values):
        b.PrependInt32(v)
    return b.EndVector()


def _offsets(b, offsets):
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


# ------------------------------------------------------------------------------ values and geometry


@dataclass
class _Val:
    """A value of the TFLite graph: ``kind`` float (a float32 tensor), sign (the sign of a float32
    tensor, not yet materialized) or bits (LCE's packed int32 tensor); ``shape`` is the unpacked
    NHWC (or (N, F)) shape; ``flat``: the tensor stands for torch's flatten of it ((C, H, W) order)."""

    tensor: int
    kind: str
    shape: tuple
    flat: bool = False


def _nhwc(dims):
    """Per-axis entries of an NCHW tensor (its shape, its pad widths) in NHWC order; a 2-D
    tensor's as they are."""
    dims = tuple(int(v) if np.isscalar(v) else tuple(v) for v in dims)
    return (dims[0], dims[2], dims[3], dims[1]) if len(dims) == 4 else dims


def _zero_padded(op) -> bool:
    """Whether a convolution op pads its input with zeros (LCE's kernels treat those apart)."""
    a = op.attrs
    return op.kind == "conv" and int(a["pad_value"]) == 0 and any(v for p in a["padding"] for v in p)


def _pool_padding(spatial, kernel, stride, pads, ceil_mode):
    """(TFLite padding, explicit (before, after) pads or None) equal to torch's pooling geometry."""
    pads = [list(p) for p in pads]
    for i, n in enumerate(spatial):
        if ceil_mode:  # ceil mode's extra window: padding after, never counted
            o = out_size(n, kernel[i], stride[i], 1, pads[i][0], pads[i][1], True)
            pads[i][1] += max(0, (o - 1) * stride[i] + kernel[i] - (n + pads[i][0] + pads[i][1]))
    if not any(v for p in pads for v in p):
        return _VALID, None
    same = [list(same_padding(n, k, s, 1)) for n, k, s in zip(spatial, kernel, stride)]
    if pads == same:
        return _SAME, None
    return _VALID, pads


# ------------------------------------------------------------------------------ lowering


class _LceLowering(_OpGraph):
    """The exporter's float-semantics ops -> TFLite tensors and LCE / builtin operators."""

    def __init__(self, ops, output, input_size):
        super().__init__(ops, output)
        self.w = _Writer()
        self.fused = self.find_fusions()
        shape = _nhwc(input_size)
        self.input = self.w.tensor(shape, np.float32, "input")
        self.env: dict[str, _Val] = {"input": _Val(self.input, "float", shape)}
        self.cache: dict[tuple, _Val] = {}
        self.absorbed: set[int] = set()
        self.binary_weight_bits = 0

    def run(self) -> bytes:
        skip = self.folded_into(self.fused)
        for op in self.ops:
            if id(op) in skip or id(op) in self.absorbed:
                continue
            if op.out in self.fused:
                self._fused(op, self.fused[op.out])
            else:
                self._lower(op)
        out = self.materialize(self.float_of(self.env[self.output]))
        return self.w.serialize([self.input], [out.tensor])

    def _lower(self, op) -> None:
        """Write one op; an op kind the engine traces but LCE export has no lowering for is refused."""
        lower = getattr(self, "_" + op.kind, None)
        if lower is None:
            raise EngineError(f"layer {op.name!r}: operation {op.kind!r} cannot be exported to LCE")
        lower(op)

    # -- helpers ----------------------------------------------------------------------------------

    def emit(self, code, inputs, shape, dtype, name, options=None, custom=None) -> int:
        out = self.w.tensor(shape, dtype, name)
        self.w.op(code, inputs, [out], options, custom)
        return out

    def reshape(self, v: _Val, shape, name) -> _Val:
        t = self.emit("RESHAPE", [v.tensor, self.w.const(np.array(shape, np.int32), name + "/shape")],
                      _packed(shape) if v.kind == "bits" else shape,
                      np.int32 if v.kind == "bits" else np.float32, name)  # fmt: skip
        return _Val(t, v.kind, tuple(shape))

    def float_of(self, v: _Val) -> _Val:
        """The value as real numbers: signs and bits become +/-1.0 through LCE's (de)quantize."""
        if v.kind == "float":
            return v
        key = ("float", v.tensor)
        if key not in self.cache:
            bits = self.bits_of(v)
            t = self.emit("LceDequantize", [bits.tensor], v.shape, np.float32, f"dequantize{v.tensor}", custom={})
            self.cache[key] = _Val(t, "float", v.shape, v.flat)
        return self.cache[key]

    def bits_of(self, v: _Val) -> _Val:
        """The packed bits of a sign value (``LceQuantize`` of its tensor, 4-D)."""
        if v.kind == "bits":
            return v
        if v.kind != "sign":
            raise EngineError("internal: bits of a real value")
        key = ("bits", v.tensor)
        if key not in self.cache:
            src = v if len(v.shape) == 4 else self.reshape(v, (v.shape[0], 1, 1, v.shape[1]), f"t{v.tensor}/4d")
            t = self.emit("LceQuantize", [src.tensor], _packed(src.shape), np.int32, f"quantize{v.tensor}", custom={})
            self.cache[key] = _Val(t, "bits", src.shape, v.flat)
        return self.cache[key]

    def materialize(self, v: _Val) -> _Val:
        """A flattened feature map as torch's (N, C*H*W) in (C, H, W) order (TRANSPOSE + RESHAPE)."""
        if not v.flat:
            return v
        key = ("flat", v.tensor)
        if key not in self.cache:
            n, h, w, c = v.shape
            x = v
            if (h, w) != (1, 1):
                perm = self.w.const(np.array([0, 3, 1, 2], np.int32), f"t{v.tensor}/perm")
                t = self.emit("TRANSPOSE", [v.tensor, perm], (n, c, h, w), np.float32, f"t{v.tensor}/nchw")
                x = _Val(t, "float", (n, c, h, w))
            self.cache[key] = self.reshape(x, (n, c * h * w), f"t{v.tensor}/flat")
        return self.cache[key]

    def real(self, op, i=0) -> _Val:
        return self.materialize(self.float_of(self.env[op.inputs[i]]))

    def pad(self, v: _Val, pads, value, name) -> _Val:
        """PAD (zeros) or PADV2 (a constant) of the spatial dims of an NHWC tensor."""
        n, h, w, c = v.shape
        shape = (n, h + sum(pads[0]), w + sum(pads[1]), c)
        paddings = self.w.const(np.array([[0, 0], *pads, [0, 0]], np.int32), name + "/paddings")
        dtype = np.int32 if v.kind == "bits" else np.float32
        inputs = [v.tensor, paddings]
        if value != 0:
            inputs.append(self.w.const(np.array(value, dtype), name + "/value"))
        t = self.emit(
            "PADV2" if value != 0 else "PAD", inputs, _packed(shape) if v.kind == "bits" else shape, dtype, name
        )
        return _Val(t, v.kind, shape)

    def affine(self, v: _Val, mul, add, name) -> _Val:
        """x * mul + add per channel (the last axis): MUL then ADD, the order torch's batch norm uses."""
        t = self.emit("MUL", [v.tensor, self.w.const(mul, name + "/mul")], v.shape, np.float32, name + "/scaled",
                      options=("MulOptions", {}))  # fmt: skip
        t = self.emit("ADD", [t, self.w.const(add, name + "/add")], v.shape, np.float32, name,
                      options=("AddOptions", {}))  # fmt: skip
        return _Val(t, "float", v.shape, v.flat)

    # -- binary layers ----------------------------------------------------------------------------

    def bconv(self, op, src: _Val, *, thresholds=None, flip=None, mul=None, add=None, relu=False) -> _Val:
        """``LceBconv2d`` of a binary conv / dense op on a sign or bits value: packed bits out
        through ``thresholds`` (bit = popcount(x XOR w) > threshold), else float out through the
        post-activation ``mul`` / ``add``. A dense layer is one window over its whole input."""
        x = self.bits_of(src)
        bits = op.attrs["kernel"][0]
        o = bits.shape[0]
        if op.kind == "conv":
            padding, pad_value, x = self.bconv_padding(op, x)
            stride, dilation = op.attrs["stride"], op.attrs["dilation"]
            filt, (oh, ow) = bits.transpose(0, 2, 3, 1), op.shape[2:]
        else:
            n, h, w, c = x.shape
            filt = bits.reshape(o, c, h, w).transpose(0, 2, 3, 1)  # torch flattens (C, H, W)
            padding, pad_value, stride, dilation, oh, ow = _VALID, 0, (1, 1), (1, 1), 1, 1
        if flip is not None:
            filt = filt ^ flip[:, None, None, None]
        packed = pack_int32(filt)
        self.binary_weight_bits += packed.size * 32
        consts = [
            self.w.const(np.asarray(arr, dtype), f"{op.name}/{what}") if arr is not None else -1
            for what, arr, dtype in (("multiplier", mul, np.float32), ("bias", add, np.float32),
                                     ("thresholds", thresholds, np.int32))
        ]  # fmt: skip
        options = {
            "channels_in": int(x.shape[3]),
            "dilation_height_factor": int(dilation[0]),
            "dilation_width_factor": int(dilation[1]),
            "fused_activation_function": 1 if relu else 0,  # tflite.ActivationFunctionType RELU / NONE
            "pad_values": int(pad_value),
            "padding": padding,
            "stride_height": int(stride[0]),
            "stride_width": int(stride[1]),
        }
        shape = (x.shape[0], int(oh), int(ow), o)
        bits_out = thresholds is not None
        correction = None
        if (
            padding == _SAME
            and pad_value == 0
            and any((k - 1) * d + 1 > n for k, d, n in zip(filt.shape[1:3], dilation, x.shape[1:3]))
        ):  # LCE's zero-padding correction assumes the kernel fits in the image: pad +1, correct here
            options["pad_values"] = 1
            correction = -np.asarray(mul, np.float32)[None, None, :] * _padding_taps(op, x.shape[1:3], filt)
        t = self.emit("LceBconv2d", [x.tensor, self.w.const(packed, f"{op.name}/filter"), *consts],
                      _packed(shape) if bits_out else shape, np.int32 if bits_out else np.float32,
                      op.name + ("/ones" if correction is not None else ""), custom=options)  # fmt: skip
        if correction is not None:
            t = self.emit("ADD", [t, self.w.const(correction[None].astype(np.float32), op.name + "/correction")],
                          shape, np.float32, op.name, options=("AddOptions", {}))  # fmt: skip
        return _Val(t, "bits" if bits_out else "float", shape)

    def bconv_padding(self, op, x: _Val):
        """(LCE padding, pad_values, input) for a binary conv: VALID, TensorFlow's SAME with zeros
        or ones, or ones padded explicitly (PAD writes 0 bits, +1) before a VALID convolution."""
        pads = [list(p) for p in op.attrs["padding"]]
        pad_value = int(op.attrs["pad_value"])
        if not any(v for p in pads for v in p):
            return _VALID, 0, x
        geometry = zip(x.shape[1:3], op.attrs["kernel_size"], op.attrs["stride"], op.attrs["dilation"])
        if pads == [list(same_padding(*g)) for g in geometry]:
            return _SAME, pad_value, x
        if pad_value == 1:
            return _VALID, 0, self.pad(x, pads, 0, op.name + "/pad")
        raise EngineError(
            f"layer {op.name!r}: zero padding {pads} is not TensorFlow's 'same'; LCE pads binary inputs "
            f"with zeros only as 'same' (use padding='same', or pad_values=1)"
        )

    def _fused(self, layer, plan):
        """A binary layer whose output only feeds a sign (through max-pool / batch norm / flatten):
        packed bits through thresholds, or, where LCE's thresholds cannot say it (zero padding, or
        a max-pool before a batch norm with a negative scale), an exact float g with sign(g) =
        torch's sign: g = sgn * dot + 0.5 - thr on integer dots."""
        chain, bn = plan["chain"], plan["bn"]
        k = int(np.prod(layer.attrs["weight"].shape[1:]))
        o = layer.attrs["weight"].shape[0]
        sgn, thr, increasing = self.thresholds(layer, plan)
        kinds = [c.kind for c in chain]
        pool_before_bn = bn is not None and "maxpool" in kinds[: kinds.index("bn")]
        zero_pad = _zero_padded(layer)
        src = self.env[layer.inputs[0]]
        pending = None
        if not zero_pad and (increasing.all() or not pool_before_bn):
            # negated filters turn decreasing channels around: bit = dot' < thr = popcount > (k - thr) / 2
            v = self.bconv(layer, src, thresholds=(k - thr) // 2, flip=~increasing)
        else:
            g = (sgn.astype(np.float32), (0.5 - thr).astype(np.float32))
            if pool_before_bn:  # pool the dots themselves, then g
                v, pending = self.bconv(layer, src, mul=np.ones(o), add=np.zeros(o)), g
            else:
                v = self.bconv(layer, src, mul=g[0], add=g[1])
        for c in chain:
            if c.kind == "maxpool":
                v = self.maxpool_value(v, c)
            elif c.kind == "bn" and pending is not None:
                v, pending = self.affine(v, *pending, c.name), None
            elif c.kind == "flatten":
                v = _Val(v.tensor, v.kind, v.shape, flat=len(v.shape) == 4)
        if v.kind == "float":
            v = _Val(v.tensor, "sign", v.shape, v.flat)
        self.env[plan["sign"].out] = v

    def _binary(self, op):
        """A binary layer with a float output: kernel scale, bias and a sole batch norm folded
        into LCE's post-activation multiplier and bias, and a relu between them (QuickNet's
        blocks) into its fused activation, which clamps the dot: relu(alpha * d) = alpha * relu(d)."""
        a = op.attrs
        o = a["weight"].shape[0]
        mul = a["kernel"][1] if a["kernel"][1] is not None else np.ones(o, np.float32)
        add = a["bias"] if a["bias"] is not None else np.zeros(o, np.float32)
        # LCE's optimized kernels zero-pad only without a fused activation
        relu = self.sole_reader(op, "relu") if a["bias"] is None and not _zero_padded(op) else None
        bn = self.sole_reader(relu or op, "bn")
        if bn is not None and bn.module.num_features != o:  # a batch norm over the layer's channels only
            bn = None
        if bn is not None:
            mul, add = mul * bn.attrs["mul"], add * bn.attrs["mul"] + bn.attrs["add"]
        v = self.bconv(op, self.env[op.inputs[0]], mul=mul, add=add, relu=relu is not None)
        if op.kind == "linear":
            v = self.reshape(v, (v.shape[0], o), op.name + "/2d")
        for folded in (op, relu, bn):
            if folded is not None:
                self.absorbed.add(id(folded))
                self.env[folded.out] = v

    # -- float layers -----------------------------------------------------------------------------

    def _conv(self, op):
        a = op.attrs
        if a["groups"] != 1:
            return self._grouped(op)
        if a["binary_input"] and a["kernel"] is not None:
            return self._binary(op)
        w = a["weight"]
        o = w.shape[0]
        bias = a["bias"] if a["bias"] is not None else np.zeros(o, np.float32)
        v = self.float_of(self.env[op.inputs[0]])
        if op.kind == "linear":
            if v.flat:  # the map stays NHWC: reorder the weights' (C, H, W) columns to (H, W, C)
                n, h, wd, c = v.shape
                w = w.reshape(o, c, h, wd).transpose(0, 2, 3, 1).reshape(o, -1)
                v = self.reshape(v, (n, h * wd * c), op.name + "/flat")
            t = self.emit("FULLY_CONNECTED", [v.tensor, self.w.const(w, op.name + "/weight"),
                          self.w.const(bias, op.name + "/bias")], (v.shape[0], o), np.float32, op.name,
                          options=("FullyConnectedOptions", {}))  # fmt: skip
            self.env[op.out] = _Val(t, "float", (v.shape[0], o))
            return
        padding, v = self.float_conv_padding(op, v)
        fields = {"Padding": padding, "StrideH": a["stride"][0], "StrideW": a["stride"][1],
                  "DilationHFactor": a["dilation"][0], "DilationWFactor": a["dilation"][1]}  # fmt: skip
        shape = _nhwc(op.shape)
        t = self.emit("CONV_2D", [v.tensor, self.w.const(w.transpose(0, 2, 3, 1), op.name + "/weight"),
                      self.w.const(bias, op.name + "/bias")], shape, np.float32, op.name,
                      options=("Conv2DOptions", fields))  # fmt: skip
        self.env[op.out] = _Val(t, "float", shape)

    _linear = _conv

    def float_conv_padding(self, op, v: _Val):
        pads = [list(p) for p in op.attrs["padding"]]
        pad_value = float(op.attrs["pad_value"])
        if not any(x for p in pads for x in p):
            return _VALID, v
        geometry = zip(v.shape[1:3], op.attrs["kernel_size"], op.attrs["stride"], op.attrs["dilation"])
        if pad_value == 0 and pads == [list(same_padding(*g)) for g in geometry]:
            return _SAME, v
        return _VALID, self.pad(v, pads, np.float32(pad_value), op.name + "/pad")

    def _grouped(self, op):
        """DEPTHWISE_CONV_2D (groups = channels), else SPLIT + one CONV_2D per group + CONCATENATION."""
        a = op.attrs
        if a["binary_input"] or a["planes"]:
            raise EngineError(
                f"layer {op.name!r} ({type(op.module).__name__}): binary input on a grouped/depthwise "
                f"convolution; LCE's binary convolutions run groups=1"
            )
        v = self.real(op)
        w, g, c = a["weight"], a["groups"], v.shape[3]
        o = w.shape[0]
        bias = a["bias"] if a["bias"] is not None else np.zeros(o, np.float32)
        padding, v = self.float_conv_padding(op, v)
        fields = {"Padding": padding, "StrideH": a["stride"][0], "StrideW": a["stride"][1],
                  "DilationHFactor": a["dilation"][0], "DilationWFactor": a["dilation"][1]}  # fmt: skip
        shape = _nhwc(op.shape)
        if g == c and w.shape[1] == 1:  # output channel j = input channel j // multiplier, as in torch
            t = self.emit("DEPTHWISE_CONV_2D", [v.tensor, self.w.const(w.transpose(1, 2, 3, 0), op.name + "/weight"),
                          self.w.const(bias, op.name + "/bias")], shape, np.float32, op.name,
                          options=("DepthwiseConv2DOptions", {**fields, "DepthMultiplier": o // c}))  # fmt: skip
            self.env[op.out] = _Val(t, "float", shape)
            return
        parts = [self.w.tensor(v.shape[:3] + (c // g,), np.float32, f"{op.name}/in{i}") for i in range(g)]
        axis = self.w.const(np.array(3, np.int32), op.name + "/axis")
        self.w.op("SPLIT", [axis, v.tensor], parts, ("SplitOptions", {"NumSplits": g}))
        outs = []
        for i, part in enumerate(parts):
            lo, hi = i * o // g, (i + 1) * o // g
            outs.append(self.emit("CONV_2D", [part, self.w.const(w[lo:hi].transpose(0, 2, 3, 1), f"{op.name}/weight{i}"),
                                  self.w.const(bias[lo:hi], f"{op.name}/bias{i}")], shape[:3] + (hi - lo,), np.float32,
                                  f"{op.name}/out{i}", options=("Conv2DOptions", fields)))  # fmt: skip
        self.env[op.out] = self.concat(outs, shape, op.name)

    def concat(self, tensors, shape, name) -> _Val:
        """CONCATENATION along the channels: the last axis of NHWC maps and of (N, features)."""
        axis = {"Axis": len(shape) - 1}
        t = self.emit("CONCATENATION", tensors, shape, np.float32, name, options=("ConcatenationOptions", axis))
        return _Val(t, "float", shape)

    def _concat(self, op):
        values = [self.materialize(self.float_of(self.env[i])) for i in op.inputs]
        self.env[op.out] = self.concat([v.tensor for v in values], _nhwc(op.shape), op.name)

    def _prelu(self, op):
        v = self.materialize(self.float_of(self.env[op.inputs[0]]))
        c = v.shape[-1]
        alpha = np.broadcast_to(op.attrs["alpha"], (c,)).astype(np.float32)
        alpha = alpha.reshape((1, 1, c) if len(v.shape) == 4 else (c,))
        t = self.emit("PRELU", [v.tensor, self.w.const(alpha, op.name + "/alpha")], v.shape, np.float32, op.name)
        self.env[op.out] = _Val(t, "float", v.shape)

    def _sigmoid(self, op):
        v = self.float_of(self.env[op.inputs[0]])
        self.env[op.out] = _Val(
            self.emit("LOGISTIC", [v.tensor], v.shape, np.float32, op.name), "float", v.shape, v.flat
        )

    def _softmax(self, op):  # over the last axis: NHWC's channels; a flattened map's order is kept
        v = self.float_of(self.env[op.inputs[0]])
        t = self.emit("SOFTMAX", [v.tensor], v.shape, np.float32, op.name, options=("SoftmaxOptions", {"Beta": 1.0}))
        self.env[op.out] = _Val(t, "float", v.shape, v.flat)

    def _expand_hw(self, op):  # (N, C) -> torch's (N, C, 1, 1), NHWC (N, 1, 1, C)
        v = self.materialize(self.float_of(self.env[op.inputs[0]]))
        self.env[op.out] = self.reshape(v, (v.shape[0], 1, 1, v.shape[1]), op.name)

    def _mul(self, op):
        x, y = (self.materialize(self.float_of(self.env[i])) for i in op.inputs)
        shape = _nhwc(op.shape)
        t = self.emit("MUL", [x.tensor, y.tensor], shape, np.float32, op.name, options=("MulOptions", {}))
        self.env[op.out] = _Val(t, "float", shape)

    def _pad(self, op):
        v = self.real(op)
        widths = _nhwc(op.attrs["widths"])  # (before, after) per dim, as the tensor's axes
        shape = _nhwc(op.shape)
        inputs = [v.tensor, self.w.const(np.array(widths, np.int32), op.name + "/paddings")]
        if op.attrs["value"] != 0:
            inputs.append(self.w.const(np.float32(op.attrs["value"]), op.name + "/value"))
        t = self.emit("PADV2" if op.attrs["value"] != 0 else "PAD", inputs, shape, np.float32, op.name)
        self.env[op.out] = _Val(t, "float", shape)

    def _bn(self, op):
        self.env[op.out] = self.affine(self.real(op), op.attrs["mul"], op.attrs["add"], op.name)

    def maxpool_value(self, v: _Val, op) -> _Val:
        """Max-pool of a float value (MAX_POOL_2D) or of packed bits (``LceBMaxPool2d``: AND)."""
        a = op.attrs
        padding, pads = _pool_padding(v.shape[1:3], a["kernel"], a["stride"], a["padding"], a["ceil_mode"])
        if pads is not None:  # pad with what never wins: -inf, or bit 1 (-1) for bits
            fill = np.int32(-1) if v.kind == "bits" else np.finfo(np.float32).min
            v = self.pad(v, pads, fill, op.name + "/pad")
        shape = _nhwc(op.shape)
        if v.kind == "bits":
            options = {"filter_height": a["kernel"][0], "filter_width": a["kernel"][1], "padding": padding,
                       "stride_height": a["stride"][0], "stride_width": a["stride"][1]}  # fmt: skip
            t = self.emit("LceBMaxPool2d", [v.tensor], _packed(shape), np.int32, op.name, custom=options)
            return _Val(t, "bits", shape)
        fields = {"Padding": padding, "StrideH": a["stride"][0], "StrideW": a["stride"][1],
                  "FilterHeight": a["kernel"][0], "FilterWidth": a["kernel"][1]}  # fmt: skip
        t = self.emit("MAX_POOL_2D", [v.tensor], shape, np.float32, op.name, options=("Pool2DOptions", fields))
        return _Val(t, "float", shape)

    def _maxpool(self, op):
        self.env[op.out] = self.maxpool_value(self.real(op), op)

    def _avgpool(self, op):
        a = op.attrs
        v = self.real(op)
        geometry = list(zip(v.shape[1:3], a["kernel"], a["stride"], a["padding"]))
        pads = [list(p) for p in a["padding"]]
        ceil_extra = a["ceil_mode"] and any(
            out_size(n, k, s, 1, *p, True) != out_size(n, k, s, 1, *p) for n, k, s, p in geometry
        )
        padding = None
        if a["divisor_override"] is None and not ceil_extra:
            if not any(x for p in pads for x in p):
                padding = _VALID
            elif a["count_include_pad"]:  # zeros that count in the mean: pad, then a VALID pool
                padding, v = _VALID, self.pad(v, pads, 0, op.name + "/pad")
            elif pads == [list(same_padding(n, k, s, 1)) for n, k, s, _ in geometry]:
                padding = _SAME  # TFLite's SAME leaves the padding out of the mean
        if padding is None:
            raise EngineError(
                f"layer {op.name!r}: average pooling with padding {a['padding']}, ceil_mode={a['ceil_mode']}, "
                f"count_include_pad={a['count_include_pad']}, divisor_override={a['divisor_override']} has no "
                f"TFLite equivalent (no padding, zeros counted, or TensorFlow's 'same' without them)"
            )
        fields = {"Padding": padding, "StrideH": a["stride"][0], "StrideW": a["stride"][1],
                  "FilterHeight": a["kernel"][0], "FilterWidth": a["kernel"][1]}  # fmt: skip
        shape = _nhwc(op.shape)
        t = self.emit("AVERAGE_POOL_2D", [v.tensor], shape, np.float32, op.name, options=("Pool2DOptions", fields))
        self.env[op.out] = _Val(t, "float", shape)

    def _gap(self, op):
        v = self.real(op)
        n, _, _, c = v.shape
        shape = (n, 1, 1, c) if op.attrs["keepdims"] else (n, c)
        axes = self.w.const(np.array([1, 2], np.int32), op.name + "/axes")
        t = self.emit("MEAN", [v.tensor, axes], shape, np.float32, op.name,
                      options=("ReducerOptions", {"KeepDims": bool(op.attrs["keepdims"])}))  # fmt: skip
        self.env[op.out] = _Val(t, "float", shape)

    def _flatten(self, op):
        v = self.env[op.inputs[0]]
        self.env[op.out] = _Val(v.tensor, v.kind, v.shape, flat=len(v.shape) == 4)

    def _sign(self, op):
        v = self.env[op.inputs[0]]
        self.env[op.out] = _Val(v.tensor, "sign", v.shape, v.flat) if v.kind == "float" else v

    def _relu(self, op):
        v = self.float_of(self.env[op.inputs[0]])  # elementwise: a flattened map stays NHWC
        self.env[op.out] = _Val(self.emit("RELU", [v.tensor], v.shape, np.float32, op.name), "float", v.shape, v.flat)

    def _hardtanh(self, op):
        v = self.float_of(self.env[op.inputs[0]])
        lo, hi = op.attrs["min"], op.attrs["max"]
        if (lo, hi) == (-1.0, 1.0):
            t = self.emit("RELU_N1_TO_1", [v.tensor], v.shape, np.float32, op.name)
        else:
            t = self.emit("MAXIMUM", [v.tensor, self.w.const(np.float32(lo), op.name + "/min")], v.shape,
                          np.float32, op.name + "/max")  # fmt: skip
            t = self.emit("MINIMUM", [t, self.w.const(np.float32(hi), op.name + "/max")], v.shape, np.float32, op.name)
        self.env[op.out] = _Val(t, "float", v.shape, v.flat)

    def _add(self, op):
        x, y = (self.float_of(self.env[i]) for i in op.inputs)
        if not (x.flat and y.flat and x.shape == y.shape):
            x, y = self.materialize(x), self.materialize(y)
        t = self.emit("ADD", [x.tensor, y.tensor], x.shape, np.float32, op.name, options=("AddOptions", {}))
        self.env[op.out] = _Val(t, "float", x.shape, x.flat)


def _padding_taps(op, spatial, filt):
    """(OH, OW, O): per output pixel and channel, the sum of the +/-1 weights that fall on
    padding: the dot with +1 padding minus the dot with zero padding."""
    (pt, _), (pl, _) = op.attrs["padding"]
    (sh, sw), (dh, dw) = op.attrs["stride"], op.attrs["dilation"]
    _, oh, ow = op.shape[1:]
    wsum = (1 - 2 * filt.astype(np.int64)).sum(axis=3)  # (O, kh, kw)
    out = np.zeros((oh, ow, filt.shape[0]), np.float32)
    for y in range(oh):
        for x in range(ow):
            rows = y * sh - pt + dh * np.arange(filt.shape[1])
            cols = x * sw - pl + dw * np.arange(filt.shape[2])
            outside = ~((rows >= 0) & (rows < spatial[0]))[:, None] | ~((cols >= 0) & (cols < spatial[1]))[None, :]
            out[y, x] = (wsum * outside).sum(axis=(1, 2))
    return out


def _packed(shape):
    """The int32 shape of packed bits: the last (channel) axis in 32-bit words."""
    return tuple(shape[:-1]) + (-(-int(shape[-1]) // 32),)


def build_lce(model: nn.Module, input_size) -> tuple[bytes, dict]:
    """The TFLite flatbuffer (bytes) of ``model`` for inputs of ``input_size`` (N, C, H, W) or
    (N, features), and a report: ``ops`` (count), ``op_counts`` (by op name), ``binary_weight_bits``
    (packed filter bits, with each word's unused bits)."""
    ops, output, size = trace_ops(model, input_size, ranks=(2, 4))
    lowering = _LceLowering(ops, output, size)
    data = lowering.run()
    names = [lowering.w.codes[op["code"]][0] for op in lowering.w.ops]
    counts = {name: names.count(name) for name in sorted(set(names))}
    return data, {"ops": len(names), "op_counts": counts, "binary_weight_bits": lowering.binary_weight_bits}


def export_lce(model: nn.Module, path, input_size) -> dict:
    """Write ``model`` (eval mode) as a Larq Compute Engine ``.tflite`` file for inputs of
    ``input_size`` (torch's NCHW; the file takes NHWC); returns a report with ``path``,
    ``file_bytes``, ``ops``, ``op_counts`` and ``binary_weight_bits``."""
    data, report = build_lce(model, input_size)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return {"path": str(path), "file_bytes": len(data), **report}
