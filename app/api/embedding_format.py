"""OpenAI's embedding options: text inputs only, `dimensions` and `encoding_format`.

`dimensions` keeps the first N components and renormalizes them (when the vectors are
normalized), as OpenAI's shortened embeddings do; `base64` is the vector's little-endian
float32 bytes, which is what the `openai` SDK decodes (and asks for by default).
"""

from __future__ import annotations

import base64
import math
from typing import Any, Literal

import numpy as np

from app.api.openai_schemas import Embedding
from app.errors import bad_request

EncodingFormat = Literal["float", "base64"]


def embedding_texts(value: Any) -> list[str]:
    """The texts of `input`: a string or a list of strings; token-id arrays are refused."""
    items = [value] if isinstance(value, str) else list(value)
    if not items:
        raise bad_request("empty_input", "input is an empty list", param="input")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise bad_request(
                "unsupported_input",
                f"input[{i}] is a token-id array; this service embeds text, send strings",
                param="input",
            )
    return items


def check_dimensions(dimensions: int | None, width: int) -> None:
    """400 when more dimensions are asked for than the vectors have."""
    if dimensions is not None and dimensions > width:
        raise bad_request(
            "invalid_dimensions",
            f"dimensions {dimensions} > the embedding width {width}",
            param="dimensions",
        )


def format_vectors(
    vectors: list[list[float]],
    *,
    dimensions: int | None,
    normalize: bool,
    encoding_format: EncodingFormat,
) -> list[Embedding]:
    """Each vector shortened (and renormalized) to `dimensions`, as floats or base64."""
    out = []
    for index, vector in enumerate(vectors):
        if dimensions is not None:
            vector = vector[:dimensions]
            if normalize:
                norm = math.sqrt(sum(x * x for x in vector)) or 1.0
                vector = [x / norm for x in vector]
        embedding: list[float] | str = vector
        if encoding_format == "base64":
            raw = np.asarray(vector, dtype="<f4").tobytes()
            embedding = base64.b64encode(raw).decode("ascii")
        out.append(Embedding(index=index, embedding=embedding))
    return out
