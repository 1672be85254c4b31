"""Model summary: per-layer bit widths, memory and multiply-accumulates (MACs), with Larq's rules.

``summary(model, input_size)`` runs one dummy forward pass (eval mode, no grad, the model's mode
restored afterwards) with forward hooks on the *leaf* layers and returns a ``ModelSummary``; by
default it also prints it. A leaf layer is a quantized layer (its quantizer sub-modules belong to
it) or a module without children; containers are never counted, so nothing is counted twice.

Counting rules (those of ``larq.models.summary``):

* Weight bit width: a quantized layer's kernel counts at its kernel quantizer's precision (1 for
  binary, 2 for ternary, k for DoReFa, 32 without quantizer); biases and every other parameter
  count 32 bits. A layer's memory is the sum of bit width x count.
* Batch norm counts **2 values per channel**: the moving mean and variance (buffers, not
  trainable). beta is dropped when a moving mean exists and gamma when a moving variance exists,
  because at inference both fold into the moving statistics (Larq's "fused pairs"). A batch norm
  without running statistics counts its gamma/beta instead. So a Larq/onebit parameter count of a
  model with affine batch norms equals PyTorch's ``sum(p.numel() for p in model.parameters())``,
  while Keras' ``count_params()`` (4 values per channel) is 2 per channel higher.
* MACs are counted for ``Linear``, ``Conv1d``, ``Conv2d`` (grouped and depthwise included) and
  their quantized versions: kernel size x output pixels per sample (pixels = H*W for 2-D maps,
  the length for 1-D, 1 for dense outputs); the bias is not a MAC. A MAC's precision is
  max(input precision, weight bit width), with a real-valued input counting as 32: a binary
  kernel fed a real input makes 32-bit MACs. Layers without parameters (pooling, activations,
  flatten, dropout) and batch norm / PReLU count 0 MACs; any other layer with parameters
  (Conv3d, transposed convolutions, ...) has an unknown MAC count, shown as "?" and counted 0.
* MACs and output shapes are per sample: the batch dimension of ``input_size`` is divided out
  and shown as -1. A layer called several times adds the MACs of every call (params count once).

Totals: parameters per bit width (total / trainable / non-trainable), model size (1-bit weights
take 1 bit), the size with every parameter wider than 8 bits stored in 8 bits, the float-32
equivalent (32 bits for every counted value), the compression ratio (size / float-32 size), total
MACs and the shares that are binary (1-bit) and ternary (2-bit).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from . import quantizers
from .layers import QuantLayer

__all__ = ["LayerSummary", "ModelSummary", "summary", "number_as_readable_str", "memory_as_readable_str"]

_MAC_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
_ZERO_MAC_WITH_PARAMS = (nn.modules.batchnorm._NormBase, nn.PReLU)


# --------------------------------------------------------------------------------------------
# Readable numbers


def number_as_readable_str(num: float) -> str:
    """A count with 3 significant digits and a k/M/B/T suffix ("40.7 k", "1.41 M", "1.00E+16")."""
    num = float(f"{num:.3g}")
    if abs(num) >= 1e15:
        return f"{num:.2E}"
    if abs(num) < 1000:
        return f"{num:.3g}"
    magnitude = 0
    while abs(num) >= 1000:
        magnitude += 1
        num /= 1000.0
    return f"{num:.3g} {' kMBT'[magnitude]}"


def memory_as_readable_str(num_bits: float) -> str:
    """Bits as bytes with two decimals in B, KiB, MiB or GiB (1 KiB = 1024 B)."""
    size = num_bits / 8
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:,.2f} {unit}"
        size /= 1024
    return f"{size:,.2f} GiB"


# --------------------------------------------------------------------------------------------
# Data


@dataclass
class LayerSummary:
    """Profile of one leaf layer.

    ``params_by_precision`` maps bit width to counted values (Larq rules, see the module doc);
    ``macs_by_precision`` maps MAC precision to MACs per sample, or is None when unknown.
    """

    name: str
    type: str
    input_precision: int | None
    output_shape: tuple | str | None
    params_by_precision: dict[int, int]
    trainable_params: int
    macs_by_precision: dict[int, int] | None

    @property
    def params(self) -> int:
        return sum(self.params_by_precision.values())

    @property
    def memory_bits(self) -> int:
        return sum(bits * n for bits, n in self.params_by_precision.items())

    @property
    def int8_memory_bits(self) -> int:
        return sum(min(bits, 8) * n for bits, n in self.params_by_precision.items())

    @property
    def macs(self) -> int:
        return sum((self.macs_by_precision or {}).values())


@dataclass
class ModelSummary:
    """Summary of a model: per-layer rows and totals. ``str(summary)`` is the printed table."""

    name: str
    layers: list[LayerSummary]
    params_by_precision: dict[int, int] = field(default_factory=dict)
    macs_by_precision: dict[int, int] = field(default_factory=dict)
    total_params: int = 0
    trainable_params: int = 0
    non_trainable_params: int = 0
    memory_bits: int = 0
    int8_memory_bits: int = 0
    float32_memory_bits: int = 0
    compression_ratio: float = 0.0
    total_macs: int = 0
    binary_mac_ratio: float = 0.0
    ternary_mac_ratio: float = 0.0

    @classmethod
    def from_layers(cls, name: str, layers: list[LayerSummary]) -> ModelSummary:
        params: dict[int, int] = {}
        macs: dict[int, int] = {}
        for layer in layers:
            for bits, n in layer.params_by_precision.items():
                params[bits] = params.get(bits, 0) + n
            for bits, n in (layer.macs_by_precision or {}).items():
                macs[bits] = macs.get(bits, 0) + n
        total = sum(params.values())
        trainable = sum(layer.trainable_params for layer in layers)
        memory = sum(bits * n for bits, n in params.items())
        total_macs = sum(macs.values())
        return cls(
            name=name,
            layers=layers,
            params_by_precision=dict(sorted(params.items())),
            macs_by_precision=dict(sorted(macs.items())),
            total_params=total,
            trainable_params=trainable,
            non_trainable_params=total - trainable,
            memory_bits=memory,
            int8_memory_bits=sum(min(bits, 8) * n for bits, n in params.items()),
            float32_memory_bits=32 * total,
            compression_ratio=memory / (32 * total) if total else 0.0,
            total_macs=total_macs,
            binary_mac_ratio=macs.get(1, 0) / total_macs if total_macs else 0.0,
            ternary_mac_ratio=macs.get(2, 0) / total_macs if total_macs else 0.0,
        )

    @property
    def binary_params(self) -> int:
        """Number of 1-bit weights."""
        return self.params_by_precision.get(1, 0)

    @property
    def binary_macs(self) -> int:
        """Number of 1-bit MACs per sample."""
        return self.macs_by_precision.get(1, 0)

    def stats_rows(self) -> list[tuple[str, str]]:
        rows = [
            ("Total params", number_as_readable_str(self.total_params)),
            ("Trainable params", number_as_readable_str(self.trainable_params)),
            ("Non-trainable params", number_as_readable_str(self.non_trainable_params)),
            ("Model size", memory_as_readable_str(self.memory_bits)),
            ("Model size (8-bit FP weights)", memory_as_readable_str(self.int8_memory_bits)),
            ("Float-32 Equivalent", memory_as_readable_str(self.float32_memory_bits)),
            ("Compression Ratio of Memory", f"{self.compression_ratio:.2f}"),
            ("Number of MACs", number_as_readable_str(self.total_macs)),
        ]
        if self.binary_mac_ratio > 0:
            rows.append(("Ratio of MACs that are binarized", f"{self.binary_mac_ratio:.4f}"))
        if self.ternary_mac_ratio > 0:
            rows.append(("Ratio of MACs that are ternarized", f"{self.ternary_mac_ratio:.4f}"))
        return rows

    def layer_table(self) -> str:
        bit_widths = sorted(self.params_by_precision) or [32]
        mac_bits = sorted(self.macs_by_precision)
        header = ["Layer", "Type", "Input prec. (bit)", "Outputs"]
        header += [f"# {b}-bit x 1" for b in bit_widths] + ["Memory (kB)"]
        header += [f"{b}-bit MACs" for b in mac_bits]
        rows = []
        for layer in self.layers:
            row = [
                layer.name,
                layer.type,
                "-" if layer.input_precision is None else str(layer.input_precision),
                _shape_str(layer.output_shape),
            ]
            row += [f"{layer.params_by_precision.get(b, 0):,}" for b in bit_widths]
            row.append(f"{layer.memory_bits / 8192:,.2f}")
            if layer.macs_by_precision is None:
                row += ["?"] * len(mac_bits)
            else:
                row += [f"{layer.macs_by_precision.get(b, 0):,}" for b in mac_bits]
            rows.append(row)
        total = ["Total", "", "", ""]
        total += [f"{self.params_by_precision.get(b, 0):,}" for b in bit_widths]
        total.append(f"{self.memory_bits / 8192:,.2f}")
        total += [f"{self.macs_by_precision.get(b, 0):,}" for b in mac_bits]
        return _table(f"{self.name} summary", header, rows, total, left=4)

    def stats_table(self) -> str:
        rows = [list(r) for r in self.stats_rows()]
        return _table(f"{self.name} stats", ["Statistic", "Value"], rows, None, left=1)

    def __str__(self) -> str:
        return self.layer_table() + "\n" + self.stats_table()


def _shape_str(shape) -> str:
    if shape is None:
        return "-"
    if isinstance(shape, str):
        return shape
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _table(title: str, header: list[str], rows: list[list[str]], total, left: int) -> str:
    """A plain ASCII table; the first ``left`` columns are left-aligned, numbers right-aligned."""
    body = rows + ([total] if total is not None else [])
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells):
        parts = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(parts) + " |"

    out = [title, rule, line(header), rule] + [line(r) for r in rows]
    if total is not None:
        out += [rule, line(total)]
    out.append(rule)
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Profiling


def _leaf_modules(model: nn.Module):
    """(name, module) of every leaf layer: quantized layers and modules without children."""
    stack = [("", model)]
    while stack:
        name, module = stack.pop()
        children = list(module.named_children())
        if isinstance(module, QuantLayer) or not children:
            if not isinstance(module, quantizers.Quantizer) or module is model:
                yield name or type(module).__name__, module
            continue
        prefix = f"{name}." if name else ""
        stack.extend((prefix + n, m) for n, m in reversed(children))


def _kernel_bits(module: nn.Module, param_name: str) -> int:
    if isinstance(module, QuantLayer) and param_name == "weight":
        return module.kernel_precision
    return 32


def _counted_params(module: nn.Module) -> list[tuple[str, torch.Tensor, int, bool]]:
    """(name, tensor, bit width, trainable) of the values the summary counts for one layer."""
    counted = []
    own = dict(module.named_parameters(recurse=False))
    if isinstance(module, nn.modules.batchnorm._NormBase):
        buffers = dict(module.named_buffers(recurse=False))
        for stat in ("running_mean", "running_var"):
            if buffers.get(stat) is not None:
                counted.append((stat, buffers[stat], 32, False))
        if "running_mean" in buffers and buffers["running_mean"] is not None:
            own.pop("bias", None)
        if "running_var" in buffers and buffers["running_var"] is not None:
            own.pop("weight", None)
    for pname, p in own.items():
        counted.append((pname, p, _kernel_bits(module, pname), p.requires_grad))
    return counted


def _profile_layer(name: str, module: nn.Module, calls: list) -> LayerSummary:
    params: dict[int, int] = {}
    trainable = 0
    for _, tensor, bits, is_trainable in _counted_params(module):
        params[bits] = params.get(bits, 0) + tensor.numel()
        trainable += tensor.numel() if is_trainable else 0

    input_precision = module.input_precision if isinstance(module, QuantLayer) else None
    shapes = {c for c in calls}
    if not calls:
        output_shape = None
    elif len(shapes) == 1:
        output_shape = calls[0]
    else:
        output_shape = "multiple"

    if isinstance(module, _MAC_LAYERS) and not isinstance(module, nn.modules.conv._ConvTransposeNd):
        macs: dict[int, int] | None = {}
        weight_bits = _kernel_bits(module, "weight")
        precision = max(input_precision or 32, weight_bits)
        for shape in calls:
            if len(shape) <= 2:
                pixels = 1
            elif isinstance(module, nn.Linear):
                pixels = _prod(shape[1:-1])
            else:
                pixels = _prod(shape[2:])
            macs[precision] = macs.get(precision, 0) + module.weight.numel() * pixels
    elif not any(True for _ in module.parameters(recurse=False)) or isinstance(module, _ZERO_MAC_WITH_PARAMS):
        macs = {}
    else:
        macs = None
    return LayerSummary(
        name=name,
        type=type(module).__name__,
        input_precision=input_precision,
        output_shape=output_shape,
        params_by_precision=dict(sorted(params.items())),
        trainable_params=trainable,
        macs_by_precision=macs,
    )


def _prod(dims) -> int:
    out = 1
    for d in dims:
        out *= int(d)
    return out


def _input_rank(model: nn.Module) -> int:
    """How many dimensions, batch included, the model's inputs have: those of the first layer
    with a kernel (a 2-D convolution's weight has 4, its input too); 2 for a dense layer."""
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() >= 2 and not isinstance(module, nn.Embedding):
            return max(weight.dim(), 2)
    return 0


def _dummy_input(model: nn.Module, input_size) -> torch.Tensor:
    """Zeros of ``input_size`` (the batch dimension added when it lacks it), on the model's device."""
    if input_size is None:
        raise ValueError(
            "summary() needs input_size, e.g. (3, 32, 32) or (1, 3, 32, 32), or input_data "
            "(models from create_model know their own size)"
        )
    size = tuple(input_size) if isinstance(input_size, (tuple, list, torch.Size)) else ()
    if not size or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in size):
        raise ValueError(
            f"input_size={input_size!r} must be a tuple of positive ints, e.g. (3, 32, 32) or (1, 3, 32, 32)"
        )
    if len(size) == _input_rank(model) - 1 or len(size) == 1:
        size = (1, *size)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return torch.zeros(size, device=device, dtype=dtype)


def summary(
    model: nn.Module,
    input_size: Sequence[int] | None = None,
    *,
    input_data: torch.Tensor | None = None,
    print_fn: Callable[[str], None] | None = print,
    verbose: bool = True,
    name: str | None = None,
) -> ModelSummary:
    """Profile ``model`` layer by layer and return a ``ModelSummary`` (printed unless told not to).

    ``input_size`` is the shape of one dummy input, with the batch dimension, e.g.
    ``(1, 3, 32, 32)``, or without it, e.g. ``(3, 32, 32)`` (C, H, W: one dimension fewer than the
    first convolution takes; F for a model that starts with a dense layer). Left out, it is the
    model's registered default size (``create_model`` models: ``model.default_input_size``).
    Alternatively pass ``input_data`` (a tensor). MACs and output shapes are per sample. ``print_fn`` receives the table (default ``print``); ``verbose=False`` or
    ``print_fn=None`` prints nothing. ``name`` titles the tables (default: the zoo name of a
    ``create_model`` model, else the class name). The model runs once in eval mode under ``torch.no_grad()``
    and its training mode is restored afterwards.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"summary(model): expected a torch.nn.Module, got {type(model).__name__}")
    if input_data is not None and not isinstance(input_data, torch.Tensor):
        raise TypeError(f"input_data={input_data!r} must be a torch.Tensor (or pass input_size)")
    if input_data is None:
        input_size = input_size if input_size is not None else getattr(model, "default_input_size", None)
        input_data = _dummy_input(model, input_size)

    leaves = list(_leaf_modules(model))
    calls: dict[int, list] = {id(m): [] for _, m in leaves}

    def hook(module, args, output):
        if isinstance(output, torch.Tensor):
            calls[id(module)].append((-1,) + tuple(output.shape[1:]))

    handles = [m.register_forward_hook(hook) for _, m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(input_data)
    except (RuntimeError, ValueError, IndexError, TypeError) as e:  # torch's shape / dtype errors
        what = (
            f"input_size={input_size!r}" if input_size is not None else f"input_data of shape {tuple(input_data.shape)}"
        )
        reason = next((t.strip() for t in str(e).splitlines() if t.strip()), type(e).__name__)
        raise ValueError(
            f"{what}: the model does not run on it ({reason}); give the size it takes, batch first"
        ) from None
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()

    seen: set[int] = set()
    layers = []
    for lname, module in leaves:
        if id(module) in seen:  # the same module registered twice: count it once
            continue
        seen.add(id(module))
        layers.append(_profile_layer(lname, module, calls[id(module)]))
    if name is None:
        name = model.name if isinstance(getattr(model, "name", None), str) else type(model).__name__
    result = ModelSummary.from_layers(name, layers)
    if verbose and print_fn is not None:
        print_fn(str(result))
    return result
