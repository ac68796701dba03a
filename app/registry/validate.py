"""Check raw adapter files before anything trusts them: safetensors bytes and config JSON.

Uploads are hostile until proven otherwise. The safetensors header is parsed and checked by
hand before the library sees the bytes (offsets in range, contiguous, no overlaps, known
dtypes, sizes that match shapes), JSON rejects duplicate keys, and nothing here ever unpickles.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors

from app.errors import SwitchyardError, bad_request
from app.untrusted import load_json

# Dtypes an adapter may carry. Integer or bool tensors have no business in adapter weights.
_DTYPE_SIZES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}
_MAX_HEADER_BYTES = 16 * 1024 * 1024
_MAX_TENSORS = 100_000
WEIGHTS_PARAM = "adapter_model.safetensors"


def too_large(what: str, size: int, limit: int, param: str) -> SwitchyardError:
    """A 413 that names the size and the limit."""
    return SwitchyardError(
        413, "payload_too_large", f"{what} is {size} bytes > limit {limit}", param=param
    )


def parse_json_object(data: bytes, *, what: str, param: str) -> dict[str, Any]:
    """Strict JSON: UTF-8 text, an object at the top, no duplicate keys, no NaN literals,
    bounded nesting (`app.untrusted.load_json`): every failure is a 400 naming `param`."""
    obj = load_json(data, what=what, param=param, reject_duplicate_keys=True)
    if not isinstance(obj, dict):
        raise bad_request("invalid_json", f"{what} must be a JSON object", param=param)
    return obj


def parse_safetensors(data: bytes, *, param: str = WEIGHTS_PARAM) -> dict[str, torch.Tensor]:
    """Validate a safetensors blob's header by hand, then load it; never unpickles."""
    header = _read_header(data, param)
    end_of_data = _check_entries(header, len(data) - 8 - _header_len(data), param)
    if end_of_data != len(data) - 8 - _header_len(data):
        raise bad_request(
            "invalid_safetensors",
            f"tensor data covers {end_of_data} bytes but the file holds "
            f"{len(data) - 8 - _header_len(data)} after the header",
            param=param,
        )
    try:
        tensors = load_safetensors(data)
    except Exception as exc:  # the library's own checks, as a second line
        raise bad_request(
            "invalid_safetensors", f"safetensors rejected the file: {exc}", param=param
        ) from exc
    _check_finite(tensors, header, data[8 + _header_len(data) :], param)
    return tensors


def _header_len(data: bytes) -> int:
    return int(struct.unpack("<Q", data[:8])[0])


def _read_header(data: bytes, param: str) -> dict[str, Any]:
    if len(data) < 8:
        raise bad_request("invalid_safetensors", "file is shorter than 8 bytes", param=param)
    length = _header_len(data)
    if length > min(_MAX_HEADER_BYTES, len(data) - 8):
        raise bad_request(
            "invalid_safetensors",
            f"header length {length} exceeds the file ({len(data)} bytes) or the "
            f"{_MAX_HEADER_BYTES}-byte header limit; is this a safetensors file?",
            param=param,
        )
    raw = data[8 : 8 + length]
    if not raw.startswith(b"{"):
        raise bad_request("invalid_safetensors", "header is not a JSON object", param=param)
    header = parse_json_object(raw, what="safetensors header", param=param)
    header.pop("__metadata__", None)
    if len(header) > _MAX_TENSORS:
        raise bad_request(
            "invalid_safetensors", f"{len(header)} tensors > limit {_MAX_TENSORS}", param=param
        )
    return header


def _check_entries(header: dict[str, Any], data_len: int, param: str) -> int:
    """Every entry: known dtype, int shape, offsets in range matching the shape; no overlap."""
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise bad_request("invalid_safetensors", f"entry {name!r} is malformed", param=param)
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _DTYPE_SIZES:
            raise bad_request(
                "invalid_dtype",
                f"tensor {name!r} has dtype {dtype!r}; allowed: {sorted(_DTYPE_SIZES)}",
                param=param,
            )
        if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
            raise bad_request(
                "invalid_safetensors", f"tensor {name!r} shape {shape!r}", param=param
            )
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
            raise bad_request(
                "invalid_safetensors", f"tensor {name!r} offsets {offsets!r}", param=param
            )
        begin, end = offsets
        expected = math.prod(shape) * _DTYPE_SIZES[dtype]
        if not begin <= end <= data_len or end - begin != expected:
            raise bad_request(
                "invalid_safetensors",
                f"tensor {name!r} offsets [{begin}, {end}] do not hold {expected} bytes "
                f"inside {data_len} bytes of data",
                param=param,
            )
        spans.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise bad_request(
                "invalid_safetensors",
                f"tensor {name!r} starts at {begin}, expected {position}: overlapping or "
                "gapped offsets",
                param=param,
            )
        position = end
    return position


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**40


def _check_finite(
    tensors: dict[str, torch.Tensor], header: dict[str, Any], payload: bytes, param: str
) -> None:
    """No NaN or Inf anywhere: the format does not check it, and one NaN poisons a batch."""
    dtypes = {entry["dtype"] for entry in header.values()}
    numpy_dtype = {"F32": np.float32, "F16": np.float16, "F64": np.float64}
    if len(dtypes) == 1 and payload and next(iter(dtypes)) in numpy_dtype:
        # One vectorised, single-threaded pass over the whole payload: torch's threaded
        # kernel pays more in thread wake-ups than in work here, and loads must stay in ms.
        values = np.frombuffer(payload, dtype=numpy_dtype[dtypes.pop()])
        if bool(np.isfinite(values).all()):
            return
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise bad_request(
                "non_finite_weights", f"tensor {name!r} contains NaN or Inf", param=param
            )
