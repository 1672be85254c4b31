"""Bit packing and the packed file format: numpy only (no torch), shared by export and runtime.

Convention (Larq Compute Engine's): bit = 1 iff the value is < 0, so sign(0) = +1 maps to bit 0.
Values are packed along the last (channel / reduction) axis into little-endian 64-bit words; the
unused bits of the last word are 0, in activations and kernels alike, so XOR leaves them 0 and a
binary dot over K valid values is ``K - 2 * popcount(a XOR w)``.

The file (``to_bytes``) is self-describing: a JSON header (format name, version, input shape, the
ops in execution order with their attributes, and the table of arrays, named
``"<op index>.<key>"``) followed by the raw little-endian arrays. numpy alone reads it.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import tempfile

import numpy as np

FORMAT = "onebit-engine"
VERSION = 1

if sys.byteorder != "little":  # pragma: no cover - every platform torch and numba ship for
    raise ImportError("onebit.engine needs a little-endian machine (packed words are little-endian)")


class EngineError(ValueError):
    """A model, file or input the engine cannot handle; the message names the culprit."""


def words_for(channels: int) -> int:
    """Number of 64-bit words holding ``channels`` bits."""
    return (int(channels) + 63) // 64


def pack_bool(bits: np.ndarray) -> np.ndarray:
    """Pack a boolean array along its last axis into uint64 words (bit i of word j = bits[64j+i])."""
    bits = np.asarray(bits, dtype=bool)
    c = bits.shape[-1]
    words = words_for(c)
    if c != words * 64:
        pad = np.zeros(bits.shape[:-1] + (words * 64 - c,), dtype=bool)
        bits = np.concatenate([bits, pad], axis=-1)
    packed = np.packbits(bits, axis=-1, bitorder="little")
    return np.ascontiguousarray(packed).view(np.uint64)


def sign(x: np.ndarray) -> np.ndarray:
    """+1 where x >= 0 (zero and -0.0 included), -1 elsewhere, as float32: the numpy twin of
    ``onebit.functional.sign`` (bit 0 of ``pack_sign``)."""
    return np.where(x >= 0, np.float32(1), np.float32(-1))


def pack_sign(x: np.ndarray, groups: int = 1) -> np.ndarray:
    """Pack sign(x) along the last axis: bit = 1 iff x < 0 (so 0 and -0.0 are +1). With
    ``groups`` > 1 the channels of each group (C / groups) start a word of their own, the layout
    a grouped binary convolution reads."""
    x = np.asarray(x)
    if groups == 1:
        return pack_bool(x < 0)
    lead = x.shape[:-1]
    return pack_bool(x.reshape(lead + (groups, x.shape[-1] // groups)) < 0).reshape(lead + (-1,))


def quantize_levels(x: np.ndarray, levels: int) -> np.ndarray:
    """round(clip(x, 0, 1) * levels) as int64, rounding half to even in float32: the integer
    level of DoReFa's activation quantizer (its output is this / levels), computed as torch does."""
    x = np.clip(np.asarray(x, np.float32), np.float32(0), np.float32(1))
    return np.rint(x * np.float32(levels)).astype(np.int64)


def pack_planes(q: np.ndarray, planes: int) -> np.ndarray:
    """Bit-planes of non-negative integers ``q`` < 2^planes, each packed along the last axis and
    the planes concatenated: (..., planes * words), plane b (bit b of q) in words [b w, (b+1) w)."""
    q = np.asarray(q, np.int64)
    return np.concatenate([pack_bool((q >> b) & 1) for b in range(planes)], axis=-1)


def unpack_sign(words: np.ndarray, channels: int) -> np.ndarray:
    """Inverse of ``pack_sign``: float32 +/-1 values, last axis ``channels`` long."""
    b = np.unpackbits(np.ascontiguousarray(words).view(np.uint8), axis=-1, bitorder="little")
    b = b[..., :channels]
    return (1.0 - 2.0 * b).astype(np.float32)


if hasattr(np, "bitwise_count"):  # numpy >= 2.0

    def popcount(words: np.ndarray) -> np.ndarray:
        """Number of set bits of every uint64 word (int64)."""
        return np.bitwise_count(words).astype(np.int64)

else:  # pragma: no cover - numpy 1.x
    _BYTE_POP = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)

    def popcount(words: np.ndarray) -> np.ndarray:
        """Number of set bits of every uint64 word (int64)."""
        words = np.ascontiguousarray(words)
        b = words.view(np.uint8).reshape(words.shape + (8,))
        return _BYTE_POP[b].sum(axis=-1)


MAGIC = b"ONEBITE\x00"
_ALIGN = 8


def _layout(arrays: dict[str, np.ndarray]) -> tuple[dict, int]:
    table, offset = {}, 0
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        table[name] = {"dtype": a.dtype.str, "shape": list(a.shape), "offset": offset}
        offset += -(-a.nbytes // _ALIGN) * _ALIGN
    return table, offset


def to_bytes(graph: dict, arrays: dict[str, np.ndarray]) -> bytes:
    """The file: magic, header length (uint64 LE), UTF-8 JSON header, then the raw arrays.

    The header is the graph plus ``"arrays"``: name -> dtype, shape and offset (from the start of
    the data, which begins at the next multiple of 8 bytes after the header). Arrays are stored
    little-endian, each at an 8-byte aligned offset, so the binary kernels cost 1 bit per weight
    plus the padding of the last 64-bit word, and the header is the only overhead.
    """
    table, total = _layout(arrays)
    header = json.dumps({**graph, "arrays": table}, separators=(",", ":")).encode("utf-8")
    head = MAGIC + np.uint64(len(header)).tobytes() + header
    head += b"\x00" * (-len(head) % _ALIGN)
    data = bytearray(total)
    for name, a in arrays.items():
        raw = np.ascontiguousarray(a).astype(np.dtype(table[name]["dtype"]).newbyteorder("<")).tobytes()
        off = table[name]["offset"]
        data[off : off + len(raw)] = raw
    return bytes(head) + bytes(data)


def save(path, graph: dict, arrays: dict[str, np.ndarray]) -> int:
    """Write ``graph`` (JSON-able) and ``arrays`` to ``path``; returns the file size in bytes."""
    blob = to_bytes(graph, arrays)
    if hasattr(path, "write"):
        path.write(blob)
        return len(blob)
    # a temp file in the same folder, then a rename: a failed write never leaves half a file
    # where an older engine file was
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
    if not os.path.isdir(os.path.dirname(path) or "."):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory (its folder does not exist)", path)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return len(blob)


def read(path) -> tuple[dict, dict[str, np.ndarray]]:
    """Read a file written by ``save``: (graph, arrays). Refuses, with one line naming the file, a
    file of another format or version, and a damaged one (truncated, bad header, bad array table)."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise EngineError(f"cannot read engine file {path!s}: {e.strerror or e}") from None
    if blob[:8] != MAGIC or len(blob) < 16:
        raise EngineError(f"{path!s} is not an onebit engine file (bad magic bytes)")
    n = int(np.frombuffer(blob, np.uint64, 1, 8)[0])
    if 16 + n > len(blob):
        raise EngineError(f"{path!s} is truncated (its header needs {16 + n} bytes, the file has {len(blob)})")
    try:
        graph = json.loads(blob[16 : 16 + n].decode("utf-8"))
    except ValueError as e:
        raise EngineError(f"{path!s}: corrupt engine header ({e})") from None
    if not isinstance(graph, dict):
        raise EngineError(f"{path!s}: corrupt engine header (a JSON {type(graph).__name__}, not an object)")
    if graph.get("format") != FORMAT:
        raise EngineError(f"{path!s} has format {graph.get('format')!r}, expected {FORMAT!r}")
    if graph.get("version") != VERSION:
        raise EngineError(f"{path!s} has format version {graph.get('version')!r}; this onebit reads version {VERSION}")
    start = 16 + n + (-(16 + n) % _ALIGN)
    table = graph.pop("arrays", None)
    if not isinstance(table, dict):
        raise EngineError(f"{path!s}: corrupt engine header (no table of arrays)")
    return graph, {name: _array(blob, start, name, spec, path) for name, spec in table.items()}


def _array(blob: bytes, start: int, name: str, spec, path) -> np.ndarray:
    """Array ``name`` of the file's data, as its table entry ``spec`` describes it."""
    try:
        dt = np.dtype(spec["dtype"])
        shape = tuple(int(v) for v in spec["shape"])
        off = start + int(spec["offset"])
        if dt.hasobject or min(shape, default=0) < 0 or off < start:
            raise ValueError("negative size or offset, or an object dtype")
    except (KeyError, TypeError, ValueError) as e:
        raise EngineError(f"{path!s}: corrupt entry for array {name!r} in the header ({e})") from None
    count = int(np.prod(shape, dtype=np.int64))
    if off + count * dt.itemsize > len(blob):
        raise EngineError(f"{path!s} is truncated (array {name!r} ends past the file)")
    return np.frombuffer(blob, dt, count, off).reshape(shape).astype(dt.newbyteorder("="))
