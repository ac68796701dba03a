"""`target_modules` resolved against the base by PEFT's rules, before anything is built.

PEFT reads a string as a regular expression that must match a module's whole name
(`re.fullmatch`) and a list as names or name suffixes (`key == t or key.endswith("." + t)`).
Whatever it matches must be a layer PEFT can adapt, or `get_peft_model` fails deep in the
trainer (with a message that prints the whole model). So a job's targets are resolved here,
at submission, on the module names of the training view (the base's, under the task model's
prefix), and the trainer hands PEFT the resolved list of names. A user's regular expression is
matched with RE2 (linear time), never with Python's backtracking engine, so a pattern such as
`([a-z.]+)+Z` cannot stall the worker; it must also compile under Python's `re`, so that it
means the same as it would to PEFT.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import re2

from app.base import FrozenBase
from app.errors import bad_request

ALL_LINEAR = "all-linear"
PARAM = "hyperparameters.target_modules"
_RE2_MAX_MEM = 1 << 20
# Output layers: the runtime serves adapters on the backbone's linear layers, not on these.
_OUTPUT_LAYERS = frozenset({"lm_head"})
_LAYER = re.compile(r"\.layers?\.(\d+)\.")


@dataclass(frozen=True)
class ViewModules:
    """Module names of the training view that hold parameters, and the adaptable ones."""

    names: tuple[str, ...]
    linear: frozenset[str]


def view_modules(base: FrozenBase) -> ViewModules:
    """The training view's module names (see app/training/view.py): the base's, under the task
    model's prefix. The runtime wraps served linear layers in place, keeping their paths, so
    names below a linear layer (the wrapper's own) are not the base's and are left out."""
    prefix = "" if base.kind == "decoder" or not base.prefix else base.prefix + "."
    linear_paths = tuple(p + "." for p in base.linear_shapes)
    live = [n for n, _m in base.model.named_modules() if n and not n.startswith(linear_paths)]
    names = {prefix + n for n in [*live, *base.linear_shapes]}
    if prefix:
        names.add(prefix[:-1])
    linear = {
        prefix + path for path in base.linear_shapes if path.split(".")[-1] not in _OUTPUT_LAYERS
    }
    return ViewModules(names=tuple(sorted(names)), linear=frozenset(linear))


def resolve_targets(base: FrozenBase, target_modules: str | list[str]) -> list[str] | None:
    """The view names of the linear layers `target_modules` selects; None for `all-linear`
    (PEFT's own choice). A 400 naming the field when it selects nothing, or anything that is
    not an adaptable linear layer."""
    if isinstance(target_modules, str) and target_modules.lower() == ALL_LINEAR:
        return None
    modules = view_modules(base)
    matches = _matcher(target_modules)
    hit = [name for name in modules.names if matches(name)]
    wrong = [name for name in hit if name not in modules.linear]
    shown = _shown(target_modules)
    if wrong:
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise bad_request(
            "invalid_hyperparameter",
            f"target_modules {shown} matches {wrong[0]!r}{more}: not an adaptable linear "
            f"layer; {_hint(modules)}",
            param=PARAM,
        )
    if not hit:
        raise bad_request(
            "invalid_hyperparameter",
            f"target_modules {shown} matches no module of the base; {_hint(modules)}",
            param=PARAM,
        )
    return hit


def _matcher(target_modules: str | list[str]) -> Callable[[str], bool]:
    if isinstance(target_modules, list):
        wanted = set(target_modules)
        suffixes = tuple("." + t for t in target_modules)
        return lambda name: name in wanted or name.endswith(suffixes)
    try:
        re.compile(target_modules)
    except (re.error, RecursionError, OverflowError) as exc:
        raise bad_request(
            "invalid_hyperparameter",
            f"target_modules {_shown(target_modules)} is not a valid regular expression: {exc}",
            param=PARAM,
        ) from exc
    options = re2.Options()
    options.max_mem = _RE2_MAX_MEM
    options.log_errors = False
    try:
        compiled = re2.compile(target_modules, options)
    except re2.error as exc:
        raise bad_request(
            "invalid_hyperparameter",
            f"target_modules {_shown(target_modules)} uses syntax outside linear-time regular "
            "expressions (backreferences, lookaround) or is too large; give a list of names",
            param=PARAM,
        ) from exc
    return lambda name: compiled.fullmatch(name) is not None


def _hint(modules: ViewModules) -> str:
    suffixes = sorted({name.rsplit(".", 1)[-1] for name in modules.linear})
    example = min(modules.linear, key=len, default="")
    return (
        f"a list matches name suffixes such as {suffixes[:6]}, a string is a regular expression "
        f"over whole names such as {example!r}"
    )


def _shown(value: str | list[str]) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def upper_targets(base: FrozenBase, targets: list[str] | None, upper: int) -> list[str]:
    """Of `targets` (None: every adaptable linear layer), those in the top `upper` layers of
    the encoder; a 400 naming the value and the base's layer count when it has fewer."""
    if upper > base.num_layers:
        raise bad_request(
            "invalid_hyperparameter",
            f"upper_layers {upper} > {base.num_layers}, the layers of base {base.name}",
            param="hyperparameters.upper_layers",
        )
    lowest = base.num_layers - upper
    names = sorted(view_modules(base).linear) if targets is None else targets
    kept = [n for n in names if (m := _LAYER.search(n)) is not None and int(m[1]) >= lowest]
    if not kept:
        raise bad_request(
            "invalid_hyperparameter",
            f"upper_layers {upper} with target_modules {_shown(targets or ALL_LINEAR)} leaves no "
            f"layer to adapt",
            param="hyperparameters.upper_layers",
        )
    return kept
