"""Embeddings: the base's pooled hidden states themselves, served on either base kind, untrained."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from app.tasks.base import Readout

NAME = "embeddings"


class Embeddings:
    """A vector a text: hidden states of `layers` (the last), pooled by `pooling` (mean)."""

    name = NAME
    order = 5
    aliases: tuple[str, ...] = ()
    kinds: frozenset[str] = frozenset({"encoder", "decoder"})
    readout = Readout.EMBEDDING
    parameters: frozenset[str] = frozenset({"layers", "pooling", "normalize"})
    methods: tuple[str, ...] | None = ()  # nothing trains it
    single_label = False

    def head_size(self, labels: list[str]) -> int:
        """No head: the pooled states are the output."""
        return 0

    @staticmethod
    def layers(params: dict[str, Any]) -> list[int]:
        """Hidden-state indices to pool (negative count from the last)."""
        return list(params.get("layers", [-1]))

    @staticmethod
    def pooling(params: dict[str, Any]) -> str:
        """How the tokens of a layer become one vector."""
        pooling: str = params.get("pooling", "mean")  # checked with the request
        return pooling

    @staticmethod
    def decode(pooled: torch.Tensor, params: dict[str, Any]) -> list[list[float]]:
        """The vectors, unit length unless `normalize` is false."""
        if params.get("normalize", True):
            pooled = F.normalize(pooled, dim=-1)
        return [v for v in pooled.float().tolist()]


TASK = Embeddings()  # the engine calls its pooling helpers, beyond the Task protocol
