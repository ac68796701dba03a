"""Check raw adapter files before anything trusts them: safetensors bytes and config JSON.

Uploads are hostile until proven otherwise. The split of work on safetensors bytes: the
library (Rust, no pickle) checks the layout (header length, offsets contiguous and covering the
file exactly, sizes that match shapes and dtypes, no overflow); what is ours is checked here,
before it sees the bytes: the header as strict JSON (duplicate names, which the library lets
the last win; text only; bounded nesting), entries of exactly dtype/shape/data_offsets, the
dtype allow-list, the tensor count, and finiteness after it.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors

from app.errors import SwitchyardError, bad_request
from app.untrusted import load_json

# Dtypes an adapter may carry. Integer or bool tensors have no business in adapter weights.
_DTYPES = frozenset({"F32", "F16", "BF16", "F64"})
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
    """Check a safetensors blob's header for what is ours, then load it; never unpickles."""
    header = _read_header(data, param)
    _check_entries(header, param)
    try:
        tensors = load_safetensors(data)
    except Exception as exc:  # the layout checks are the library's
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


def _check_entries(header: dict[str, Any], param: str) -> None:
    """Every entry: exactly dtype, shape and data_offsets, and an allowed dtype."""
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise bad_request("invalid_safetensors", f"entry {name!r} is malformed", param=param)
        # (a list or object is unhashable: `in` alone would raise TypeError, a 500)
        if not isinstance(entry["dtype"], str) or entry["dtype"] not in _DTYPES:
            raise bad_request(
                "invalid_dtype",
                f"tensor {name!r} has dtype {str(entry['dtype'])[:20]!r}; allowed: "
                f"{sorted(_DTYPES)}",
                param=param,
            )


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
