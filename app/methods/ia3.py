"""`method: "ia3"`: learned scaling vectors on the base's linear layers (PEFT's IA3).

Files: PEFT's `IA3` config and `<module>.ia3_l` vectors, `(1, in)` for feed-forward modules
(scaled on their input) and `(out, 1)` for the others. Served by the per-slot IA3 tables of
app/runtime/layers.py (`MultiLoraLinear._scaled`). Trained as PEFT's own model, encoders only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from peft import IA3Config, TaskType, get_peft_model
from torch import nn

from app.base import FrozenBase
from app.errors import bad_request
from app.methods.base import (
    WEIGHTS,
    AdapterWeights,
    Entry,
    Parsing,
    StrictSpec,
    Traits,
    Wrapping,
    module_path,
    spec,
    task_type,
)
from app.registry.finite import as_float32

if TYPE_CHECKING:
    from app.training.hyperparameters import Hyperparameters


class IA3ConfigSpec(StrictSpec):
    """The fields of PEFT's IA3Config that serving acts on."""

    peft_type: Literal["IA3"]
    feedforward_modules: list[str] | str | None = None
    fan_in_fan_out: Literal[False] = False


class IA3Files:
    """PEFT's IA3 files."""

    peft_type = "IA3"

    def parse(self, job: Parsing) -> int:
        """Every `ia3_l` vector, on a linear layer of the base, on the side its shape says."""
        spec(IA3ConfigSpec, job.config)
        base, weights = job.base, job.weights
        for key, tensor in sorted(job.body.items()):
            if not key.endswith(".ia3_l"):
                raise bad_request(
                    "unknown_tensor", f"tensor {key!r} is not an IA3 vector", param=WEIGHTS
                )
            path = module_path(base, key.removesuffix(".ia3_l"), weights.ia3)
            if path not in base.linear_shapes:
                raise bad_request(
                    "unknown_module",
                    f"IA3 vector {key!r} targets {path!r}, not a linear layer",
                    param=WEIGHTS,
                )
            _check_side(path, tensor, base, weights)
            weights.ia3[path] = as_float32(
                tensor.reshape(-1), runtime_dtype=base.dtype, what=f"tensor {key!r}", param=WEIGHTS
            )
        if not weights.ia3:
            raise bad_request("empty_adapter", "the adapter holds no IA3 vectors", param=WEIGHTS)
        return 1


def _check_side(path: str, tensor: torch.Tensor, base: FrozenBase, weights: AdapterWeights) -> None:
    d_in, d_out = base.linear_shapes[path]
    # PEFT stores feed-forward vectors as (1, in) and the others as (out, 1): the shape
    # alone says which side a vector scales, even for square layers.
    if tuple(tensor.shape) == (1, d_in):
        weights.ia3_input_side.add(path)
    elif tuple(tensor.shape) != (d_out, 1):
        raise bad_request(
            "shape_mismatch",
            f"IA3 vector of {path!r} is {tuple(tensor.shape)}; expected ({d_out}, 1) or "
            f"(1, {d_in}) for a feed-forward module",
            param=WEIGHTS,
        )


class IA3Trainer:
    """PEFT's IA3 model; the head kept under `modules_to_save`."""

    def wrap(self, job: Wrapping) -> nn.Module:
        """PEFT's IA3 model over an encoder view."""
        return get_peft_model(job.view, _config(job.hp, task_type(job.task), job.targets))


def _config(hp: Hyperparameters, task: TaskType, resolved: list[str] | None) -> IA3Config:
    """PEFT's IA3 defaults for the architecture, unless the user names the modules."""
    if resolved is None and hp.target_modules == "all-linear":
        return IA3Config(task_type=task, modules_to_save=["classifier"])
    given = hp.target_modules
    targets = resolved if resolved is not None else [given] if isinstance(given, str) else given
    # Dense projections out of a block are IA3's feed-forward modules: scaled on their input.
    feedforward = [t for t in targets if t.split(".")[-1] == "dense"]
    return IA3Config(
        task_type=task,
        target_modules=targets,
        feedforward_modules=feedforward,
        modules_to_save=["classifier"],
    )


IA3 = Entry(
    name="ia3",
    traits=Traits(pooled_head=True, learning_rate=3e-3, layer_targets=True),
    files=IA3Files(),
    trainer=IA3Trainer(),
)
