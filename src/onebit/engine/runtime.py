"""The runtime: runs an exported file with numpy and the kernels, without torch.

``load(path)`` returns a ``Runtime``; ``runtime(x)`` takes a numpy array shaped like the model's
input (NCHW, any batch size) and returns the model's output as float32 (NCHW for 4-D outputs).
Internally activations are NHWC; binary layers exchange packed uint64 words.

Backends: "numba" (JIT kernels, threads over output rows) or "numpy" (the reference kernels);
"auto" takes numba when it imports, else numpy. Both give the same integers in binary layers.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..kernels import bits as _bits
from ..kernels import jit_kernels
from ..kernels import reference as _np_kernels
from ..kernels.bits import EngineError, unpack_sign
from ..kernels.geometry import out_size

__all__ = ["Runtime", "load", "available_backends"]


def available_backends() -> list[str]:
    """Backends that work here: "numba" (when numba imports) and "numpy"."""
    return (["numba"] if jit_kernels() is not None else []) + ["numpy"]


_BINARY_OPS = frozenset(
    {
        "pack",
        "pack_levels",
        "unpack",
        "sign",
        "bconv2d",
        "bdense",
        "bconv2d_planes",
        "bdense_planes",
        "maxpool2d_bits",
        "flatten_bits",
    }
)
_FLOAT_OPS = frozenset(
    {
        "conv2d",
        "dense",
        "scale_shift",
        "maxpool2d",
        "avgpool2d",
        "global_avgpool",
        "flatten",
        "add",
        "relu",
        "hardtanh",
        "identity",
        "levels",
        "concat",
        "pad",
        "mul",
        "mul_scalar",
        "add_scalar",
        "prelu",
        "sigmoid",
        "softmax",
        "tanh",
        "expand_hw",
    }
)


# the arrays each op needs (conv2d and dense: "weight", or "weight_bits" for 1-bit kernels)
_ARRAYS = {
    "bconv2d": ("weight",),
    "bdense": ("weight",),
    "bconv2d_planes": ("weight",),
    "bdense_planes": ("weight",),
    "scale_shift": ("mul", "add"),
    "prelu": ("slope",),
    "maxpool2d_bits": ("and_mask",),
}


def _why(e: Exception) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0]


def check_graph(graph, where: str = "engine graph") -> None:
    """``EngineError`` (naming ``where``) unless ``graph`` is a program the runtime can run: an input
    shape of positive ints, ops of known kinds, each reading values defined before it, an output."""
    if not isinstance(graph, dict) or not isinstance(graph.get("input"), dict):
        raise EngineError(f"{where}: corrupt graph (no input)")
    shape = graph["input"].get("shape")
    if not isinstance(shape, list) or len(shape) < 2 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise EngineError(f"{where}: corrupt graph (input shape {shape!r})")
    ops = graph.get("ops")
    if not isinstance(ops, list):
        raise EngineError(f"{where}: corrupt graph (no op list)")
    defined = {"input"}
    for i, op in enumerate(ops):
        if not isinstance(op, dict) or not isinstance(op.get("in"), list) or not isinstance(op.get("out"), str):
            raise EngineError(f"{where}: corrupt graph (op {i} has no inputs / output)")
        if op.get("op") not in _BINARY_OPS | _FLOAT_OPS:
            raise EngineError(f"{where}: op {i} has unknown kind {op.get('op')!r}; the file needs a newer onebit")
        missing = [v for v in op["in"] if v not in defined]
        if missing:
            raise EngineError(f"{where}: corrupt graph (op {i} reads {missing[0]!r} before it is computed)")
        defined.add(op["out"])
    if graph.get("output") not in defined:
        raise EngineError(f"{where}: corrupt graph (output {graph.get('output')!r} is never computed)")


def _softmax(x):
    """Softmax over the last axis (the channels), shifted by the maximum so exp cannot overflow."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True, dtype=np.float32)).astype(np.float32)


def _sigmoid(x):
    with np.errstate(over="ignore"):  # exp(-x) = inf for x << 0 gives 0, as it should
        return (np.float32(1) / (np.float32(1) + np.exp(-x))).astype(np.float32)


# float ops of one input: f(x, op attributes, op arrays)
_ELEMENTWISE = {
    "scale_shift": lambda x, op, a: x * a["mul"] + a["add"],
    "global_avgpool": lambda x, op, a: x.mean(axis=(1, 2), dtype=np.float32, keepdims=op["keepdims"]),
    "relu": lambda x, op, a: np.maximum(x, np.float32(0)),
    "hardtanh": lambda x, op, a: np.clip(x, np.float32(op["min"]), np.float32(op["max"])),
    "prelu": lambda x, op, a: np.where(x >= 0, x, x * a["slope"]).astype(np.float32),
    "sigmoid": lambda x, op, a: _sigmoid(x),
    "softmax": lambda x, op, a: _softmax(x),
    "tanh": lambda x, op, a: np.tanh(x),
    "levels": lambda x, op, a: _bits.quantize_levels(x, op["levels"]).astype(np.float32) / np.float32(op["levels"]),
    "add_scalar": lambda x, op, a: x + np.float32(op["value"]),
    "mul_scalar": lambda x, op, a: x * np.float32(op["value"]),
    "expand_hw": lambda x, op, a: x.reshape(x.shape[0], 1, 1, x.shape[1]),
    "identity": lambda x, op, a: x,
}


def _pads(p):
    return tuple(tuple(int(v) for v in pair) for pair in p)


# element-wise ops a fused convolution step may take on (see ``Runtime._fused_step``)
_EPILOGUE_OPS = frozenset({"scale_shift", "relu", "prelu", "add"})


@dataclass(frozen=True)
class _Step:
    """Ops run as one: ``ops`` in graph order; for a fused convolution ``post`` is its epilogue
    (``onebit.kernels.jit_float.Epilogue``) and ``residual`` the value its add reads."""

    ops: tuple[int, ...]
    post: Any = None
    residual: str | None = None


def _conv_output_shape(op: dict, x: np.ndarray, channels: int) -> tuple[int, ...]:
    """(N, Ho, Wo, O) of conv op ``op`` on NHWC ``x``."""
    (pt, pb), (pl, pr) = _pads(op["padding"])
    kh, kw = op["kernel"]
    ho = out_size(x.shape[1], kh, op["stride"][0], op["dilation"][0], pt, pb)
    wo = out_size(x.shape[2], kw, op["stride"][1], op["dilation"][1], pl, pr)
    return (x.shape[0], ho, wo, channels)


def _blas_limiter(num_threads: int | None):
    """A context manager holding BLAS (the float convolutions' matmuls) to ``num_threads`` while
    the model runs, so ``num_threads`` bounds the whole inference; a no-op without a count (BLAS
    keeps its own) or without threadpoolctl."""
    if num_threads is None:
        return contextlib.nullcontext
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return contextlib.nullcontext
    controller = ThreadpoolController()
    return lambda: controller.limit(limits=num_threads, user_api="blas")


class Runtime:
    """A loaded model: call it on a numpy array. ``ops`` lists the graph (op names and attributes)."""

    def __init__(
        self,
        graph: dict,
        arrays: dict[str, np.ndarray],
        backend: str = "auto",
        num_threads: int | None = None,
        *,
        fuse: bool = True,
        where: str = "engine graph",
    ):
        if backend not in ("auto", "numba", "numpy"):
            raise EngineError(f"backend={backend!r} is not one of 'auto', 'numba', 'numpy'")
        if num_threads is not None and (
            isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1
        ):
            raise EngineError(f"num_threads={num_threads!r} must be None or an int >= 1")
        jit = jit_kernels() if backend in ("auto", "numba") else None
        if backend == "numba" and jit is None:
            raise EngineError("backend='numba' needs numba (pip install 'onebit[jit]'); use 'numpy'")
        self.backend = "numba" if jit is not None else "numpy"
        self._k = jit if jit is not None else _np_kernels
        if jit is not None and num_threads is not None:
            import numba

            numba.set_num_threads(max(1, min(int(num_threads), numba.config.NUMBA_NUM_THREADS)))
        check_graph(graph, where)
        self.graph = graph
        self.input_shape = tuple(graph["input"]["shape"])
        self.ops = graph["ops"]
        self._arrays = {}
        for i, op in enumerate(self.ops):
            a = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.split(".", 1)[0] == str(i)}
            missing = [k for k in _ARRAYS.get(op["op"], ()) if k not in a]
            if op["op"] in ("conv2d", "dense") and not ("weight" in a or "weight_bits" in a):
                missing.append("weight")
            if missing:
                raise EngineError(f"{where}: op {i} ({op['op']}) has missing or malformed arrays (no {missing[0]!r})")
            try:
                self._arrays[i] = self._prepare(op, a)
            except (KeyError, IndexError, TypeError, ValueError) as e:
                raise EngineError(f"{where}: op {i} ({op['op']}) has missing or malformed arrays ({_why(e)})") from None
        self._last_use = {}
        self._uses: dict = {}
        for i, op in enumerate(self.ops):
            for v in op["in"]:
                self._last_use[v] = i
                self._uses[v] = self._uses.get(v, 0) + 1
        self._blas_limit = _blas_limiter(num_threads)
        self._steps = self._plan(fuse)

    def _plan(self, fuse: bool) -> list[_Step]:
        """The execution steps: each op alone, or (``fuse``, numba) a convolution and what
        ``_fused_step`` joins to it."""
        steps, i = [], 0
        while i < len(self.ops):
            step = self._fused_step(i) if fuse else None
            steps.append(step or _Step((i,)))
            i = steps[-1].ops[-1] + 1
        return steps

    def _fused_step(self, i: int) -> _Step | None:
        """The step that starts at op ``i`` when it is a convolution the numba kernels finish with
        an epilogue (a float conv2d, or a binary conv with float output), else None.

        The element-wise ops right after it join the step while each reads the previous one's
        value and nobody else does: per-channel scale_shift (a folded batch norm), relu, per-channel
        prelu, and one add of another value (a residual branch). A pack of the last value joins
        too. The step then writes the last float value only where something else reads it (the
        next block's shortcut) and the packed bits, in one pass: no batch-sized float array between
        a residual block's binary conv and the next block's packed input."""
        op = self.ops[i]
        if self.backend != "numba":
            return None
        if op["op"] == "conv2d":
            channels = self._arrays[i]["wmat"].shape[1]
        elif op["op"] == "bconv2d" and op["mode"] == "float" and op.get("groups", 1) == 1:
            channels = self._arrays[i]["weight"].shape[0]
        else:
            return None
        chain, residual = [i], None
        while True:
            j, prev = chain[-1] + 1, self.ops[chain[-1]]["out"]
            if j >= len(self.ops) or self._uses.get(prev) != 1 or prev == self.graph["output"]:
                break
            nxt = self.ops[j]
            if prev not in nxt["in"] or nxt["op"] not in _EPILOGUE_OPS:
                break
            if nxt["op"] == "add":
                others = [v for v in nxt["in"] if v != prev]
                if residual is not None or len(nxt["in"]) != 2 or len(others) != 1:
                    break
                residual = others[0]
            elif nxt["in"] != [prev] or not self._per_channel(j, channels):
                break
            chain.append(j)
        last, pack = self.ops[chain[-1]]["out"], None
        j = chain[-1] + 1
        if j < len(self.ops) and self.ops[j]["op"] == "pack" and self.ops[j]["in"] == [last]:
            if self.ops[j].get("groups", 1) == 1:
                pack = j
        store = self._uses.get(last, 0) > (pack is not None) or last == self.graph["output"]
        ops = tuple(chain) + ((pack,) if pack is not None else ())
        post = self._k.make_epilogue(self._epilogue_steps(chain), channels, store=store, pack=pack is not None)
        return _Step(ops, post=post, residual=residual)

    def _epilogue_steps(self, chain: list[int]) -> list[tuple]:
        """(code, mul, add) of the epilogue after conv ``chain[0]``: its bias, then each op."""
        k = self._k
        a0 = self._arrays[chain[0]]
        steps = [(k.AFFINE, None, a0["bias"])] if self.ops[chain[0]]["op"] == "conv2d" and "bias" in a0 else []
        for j in chain[1:]:
            kind, a = self.ops[j]["op"], self._arrays[j]
            if kind == "scale_shift":
                steps.append((k.AFFINE, a["mul"], a["add"]))
            elif kind == "relu":
                steps.append((k.RELU, None, None))
            elif kind == "prelu":
                steps.append((k.PRELU, a["slope"], None))
            else:  # add
                steps.append((k.RESIDUAL, None, None))
        return steps

    @property
    def steps(self) -> list[tuple[int, ...]]:
        """The op indices each execution step runs: one op, or a fused convolution with the
        element-wise ops and the packing after it."""
        return [s.ops for s in self._steps]

    # -- load-time preparation: derived arrays the kernels want -------------------------------

    def _prepare(self, op, a):
        kind = op["op"]
        if kind == "bconv2d" and op.get("groups", 1) == 1:
            a["wpc"] = _bits.popcount(a["weight"]).sum(axis=-1).reshape(a["weight"].shape[0], -1)
            if self.backend == "numba":
                a["wt"] = self._k.kernel_matrix(a["weight"])
        if kind in ("conv2d", "dense"):
            if "weight_bits" in a:  # a 1-bit kernel of a real-input layer: unpack once, here
                shape = tuple(op["weight_shape"])
                flat = np.unpackbits(a.pop("weight_bits"), bitorder="little")[: int(np.prod(shape))]
                w = (1.0 - 2.0 * flat.astype(np.float32)).reshape(shape)
                if "alpha" in a:
                    w = w * a.pop("alpha").reshape((-1,) + (1,) * (len(shape) - 1))
            else:
                w = a.pop("weight")
            if kind == "conv2d":  # torch (O, C, kh, kw) -> im2col matrix (kh*kw*C, O)
                a["wmat"] = np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0]))
            else:
                a["wmat"] = np.ascontiguousarray(w.T)
            a["wmat"] = a["wmat"].astype(np.float32)
        for key in ("mul", "add", "bias", "slope"):
            if key in a:
                a[key] = a[key].astype(np.float32)
        for key in ("sgn", "thr"):
            if key in a:
                a[key] = a[key].astype(np.int64)
        return a

    # -- execution ----------------------------------------------------------------------------

    def __call__(self, x) -> np.ndarray:
        return self._execute(x, None)

    def op_inputs(self, x: np.ndarray) -> list[list[np.ndarray]]:
        """Run on ``x`` and return every op's input arrays (for per-op benchmarks with ``run_op``)."""
        record: list = []
        self._execute(x, record)
        return record

    def run_op(self, i: int, args: list[np.ndarray]) -> np.ndarray:
        """Run op ``i`` alone on its input arrays (as returned by ``op_inputs``)."""
        return self._run(i, self.ops[i], args)

    def _input(self, x) -> np.ndarray:
        """``x`` as float32, or ``EngineError`` saying what the model takes."""
        want = ("N",) + tuple(self.input_shape[1:])
        try:
            a = np.asarray(x)
        except Exception as e:  # noqa: BLE001 - e.g. a CUDA tensor, a ragged list
            raise EngineError(
                f"input: expected a numeric array of shape {want}, got {type(x).__name__} ({e})"
            ) from None
        if a.dtype.kind not in "biuf":
            raise EngineError(f"input: expected a real-valued numeric array of shape {want}, got dtype {a.dtype}")
        if a.ndim != len(want) or tuple(a.shape[1:]) != want[1:] or a.shape[0] < 1:
            raise EngineError(
                f"input shape {tuple(a.shape)} does not match the exported shape {want} (any batch size N >= 1)"
            )
        return a.astype(np.float32, copy=False)

    def _execute(self, x, record):
        x = self._input(x)
        if x.ndim == 4:
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        env = {"input": x}
        steps = [_Step((i,)) for i in range(len(self.ops))] if record is not None else self._steps
        with self._blas_limit():
            for step in steps:
                i, op = step.ops[0], self.ops[step.ops[0]]
                if record is not None:
                    record.append([env[v] for v in op["in"]])
                try:
                    if step.post is None or not self._run_fused(step, env):
                        for j in step.ops:
                            env[self.ops[j]["out"]] = self._run(j, self.ops[j], [env[v] for v in self.ops[j]["in"]])
                except EngineError:
                    raise
                except (KeyError, IndexError, TypeError, ValueError) as e:  # attributes a damaged file lacks
                    raise EngineError(f"op {i} ({op['op']}) cannot run: {_why(e)} (a damaged engine file?)") from None
                for j in step.ops:
                    for v in self.ops[j]["in"]:
                        if self._last_use.get(v) == j and v != self.ops[j]["out"]:
                            env.pop(v, None)
        y = env[self.graph["output"]]
        if y.ndim == 4:
            y = y.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(y, dtype=np.float32)

    def _per_channel(self, j, channels):
        """Whether op j's arrays (a scale_shift's mul/add) are one value per output channel."""
        return all(a.size == channels for k, a in self._arrays[j].items() if k in ("mul", "add"))

    def _run_fused(self, step: _Step, env: dict) -> bool:
        """Run a fused step (see ``_fused_step``) into ``env``; False, having done nothing, when its
        residual does not have the convolution's output shape (the ops then run one by one)."""
        i = step.ops[0]
        op, a, x = self.ops[i], self._arrays[i], env[self.ops[i]["in"][0]]
        post = step.post
        if step.residual is not None:
            res = env[step.residual]
            if res.shape != _conv_output_shape(op, x, post.mul.shape[1]) or res.dtype != np.float32:
                return False
            post = post._replace(residual=np.ascontiguousarray(res))
        geometry = (tuple(op["stride"]), tuple(op["dilation"]), _pads(op["padding"]), op["pad_value"])
        if op["op"] == "conv2d":
            f, b = self._k.conv2d(x, a["wmat"], None, tuple(op["kernel"]), *geometry, op.get("groups", 1), post)
        else:  # a binary conv with float output
            f, b = self._k.bconv2d(
                x, a["weight"], op["in_channels"], *geometry, "float", a["mul"], a["add"],
                wpc=a["wpc"], wt=a["wt"], post=post,
            )  # fmt: skip
        float_op = step.ops[-2] if post.pack else step.ops[-1]  # the last op before the pack
        if post.store:
            env[self.ops[float_op]["out"]] = f
        if post.pack:
            env[self.ops[step.ops[-1]]["out"]] = b
        return True

    def _run(self, i, op, args):
        kind = op["op"]
        if kind in _BINARY_OPS:
            return self._run_binary(i, op, args[0])
        y = self._run_float(i, op, args)
        if y is None:
            raise EngineError(f"op {i} has unknown kind {kind!r}; the file needs a newer onebit")
        return y

    def _run_binary(self, i, op, x):
        """The ops on packed bits (and the sign / packing between float and bits)."""
        a = self._arrays[i]
        k = self._k
        kind = op["op"]
        if kind == "pack":
            return _bits.pack_sign(x, op.get("groups", 1))
        if kind == "pack_levels":
            return _bits.pack_planes(_bits.quantize_levels(x, op["levels"]), op["planes"])
        if kind == "unpack":
            return unpack_sign(x, op["channels"])
        if kind == "sign":
            return _bits.sign(x)
        if kind == "maxpool2d_bits":
            return k.maxpool2d_bits(
                x, tuple(op["kernel"]), tuple(op["stride"]), _pads(op["padding"]), op["ceil_mode"], a["and_mask"]
            )
        if kind == "flatten_bits":
            return x.reshape(x.shape[0], -1)
        out = (op["mode"], a.get("mul"), a.get("add"), a.get("sgn"), a.get("thr"))
        if kind == "bconv2d":
            extra = {"wpc": a["wpc"], "wt": a["wt"]} if "wt" in a else {}
            geometry = (tuple(op["stride"]), tuple(op["dilation"]), _pads(op["padding"]), op["pad_value"])
            return k.bconv2d(x, a["weight"], op["in_channels"], *geometry, *out, groups=op.get("groups", 1), **extra)
        if kind == "bconv2d_planes":
            geometry = (tuple(op["stride"]), tuple(op["dilation"]), _pads(op["padding"]))
            return k.bconv2d_planes(x, a["weight"], op["planes"], *geometry, *out)
        if kind == "bdense":
            return k.bdense(x, a["weight"], op["in_features"], *out)
        return k.bdense_planes(x, a["weight"], op["planes"], *out)  # bdense_planes

    def _run_float(self, i, op, args):
        """The float ops (numpy); None for an unknown kind."""
        a = self._arrays[i]
        kind = op["op"]
        x = args[0] if args else None
        if kind == "conv2d":
            geometry = (tuple(op["kernel"]), tuple(op["stride"]), tuple(op["dilation"]), _pads(op["padding"]))
            kernels = self._k if self.backend == "numba" else _np_kernels
            return kernels.conv2d(x, a["wmat"], a.get("bias"), *geometry, op["pad_value"], op.get("groups", 1))
        if kind == "dense":
            return _np_kernels.dense(x, a["wmat"], a.get("bias"))
        pools = self._k if self.backend == "numba" else _np_kernels
        if kind == "maxpool2d":
            return pools.maxpool2d(x, tuple(op["kernel"]), tuple(op["stride"]), _pads(op["padding"]), op["ceil_mode"])
        if kind == "avgpool2d":
            return pools.avgpool2d(
                x,
                tuple(op["kernel"]),
                tuple(op["stride"]),
                _pads(op["padding"]),
                op["ceil_mode"],
                op["count_include_pad"],
                op["divisor_override"],
            )
        if kind == "flatten":
            if x.ndim == 4:
                x = x.transpose(0, 3, 1, 2)  # torch's (C, H, W) order
            return np.ascontiguousarray(x).reshape(x.shape[0], -1)
        if kind == "concat":
            return np.concatenate(args, axis=-1)  # channels are the last axis (NHWC)
        if kind == "pad":
            return np.pad(x, op["widths"], constant_values=np.float32(op["value"]))
        if kind == "add":
            return args[0] + args[1]
        if kind == "mul":
            return args[0] * args[1]
        f = _ELEMENTWISE.get(kind)
        return None if f is None else f(x, op, a)

    def summary(self) -> str:
        """One line per op: index, kind, output id and the main attributes."""
        lines = []
        for i, op in enumerate(self.ops):
            attrs = {k: v for k, v in op.items() if k not in ("op", "in", "out", "name")}
            lines.append(f"{i:3d} {op['op']:<15} {op.get('name', ''):<24} {attrs}")
        return "\n".join(lines)


def load(
    path: str | os.PathLike, backend: str = "auto", num_threads: int | None = None, *, fuse: bool = True
) -> Runtime:
    """Load an exported file (``onebit.engine.export``) as a runtime model; needs numpy only.

    backend: "auto" (numba when installed, else numpy), "numba" or "numpy".
    num_threads: numba threads (default: numba's, i.e. the core count or NUMBA_NUM_THREADS), and
    the BLAS threads of the float convolutions while the model runs (with threadpoolctl).
    fuse: with numba, run each convolution together with the element-wise ops and the sign
    packing after it (same values as op by op, fewer passes); False runs op by op.
    """
    if not os.path.exists(path):
        raise EngineError(f"no engine file at {path!s}")
    if os.path.isdir(path):
        raise EngineError(f"{path!s} is a folder, not an engine file")
    graph, arrays = _bits.read(path)
    return Runtime(graph, arrays, backend=backend, num_threads=num_threads, fuse=fuse, where=str(path))
