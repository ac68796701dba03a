"""`rank_pattern` / `alpha_pattern` keys of a LoRA config, matched the way PEFT does, safely.

PEFT reads each key as a Python regular expression and picks the first key for which
`re.match(rf"(.*\\.)?({key})$", module_name)` succeeds. Python's backtracking engine takes
exponential time on keys such as `([a-z.]+)+Z`, and an upload's config is re-read at every
load on the engine thread, so one hostile key would stall every tenant. Keys are therefore
matched with RE2 (linear time in the key and the name, bounded memory). A key must also compile
under Python's `re`, because that is what PEFT uses when someone loads the download: a key RE2
accepts and Python refuses (or the reverse: backreferences, lookaround) is a 400 here rather
than an adapter that behaves differently in two places. For the regular syntax both engines
share, whether a key matches a module name is the same question in both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import re2

from app.errors import bad_request

# Real configs name a few modules per layer (a 32-layer decoder: a few hundred keys of ~50
# characters). These bounds keep compiling and matching them well under a millisecond each.
MAX_PATTERN_KEYS = 1024
MAX_PATTERN_CHARS = 256
_RE2_MAX_MEM = 1 << 20
_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class CompiledPatterns:
    """One pattern dict, compiled; `value_for` gives PEFT's answer for a module name."""

    field: str
    entries: tuple[tuple[str, Any, Any], ...]  # (key, compiled RE2, value), in config order

    def value_for(self, path: str, default: Any) -> Any:
        """The value of the first key that matches `path` (PEFT's order), else `default`."""
        for _key, compiled, value in self.entries:
            if compiled.match(path) is not None:
                return value
        return default


def compile_patterns(field: str, patterns: dict[str, Any]) -> CompiledPatterns:
    """Compile `patterns` (config field `field`) or raise a 400 `invalid_config` naming it."""
    if len(patterns) > MAX_PATTERN_KEYS:
        raise _invalid(field, f"has {len(patterns)} keys > limit {MAX_PATTERN_KEYS}")
    options = re2.Options()
    options.max_mem = _RE2_MAX_MEM
    options.log_errors = False
    entries = []
    for key, value in patterns.items():
        if len(key) > MAX_PATTERN_CHARS:
            raise _invalid(
                field, f"key {key[:40]!r}... is {len(key)} characters > limit {MAX_PATTERN_CHARS}"
            )
        source = rf"(.*\.)?({key})$"
        try:
            re.compile(source)
        except (re.error, RecursionError, OverflowError) as exc:
            raise _invalid(field, f"key {key!r} is not a valid regular expression: {exc}") from exc
        try:
            compiled = re2.compile(source, options)
        except re2.error as exc:
            raise _invalid(
                field,
                f"key {key!r} uses syntax outside linear-time regular expressions "
                "(backreferences, lookaround) or is too large; use module-name suffixes such "
                "as 'layer.0.attention.self.query'",
            ) from exc
        entries.append((key, compiled, value))
    return CompiledPatterns(field=field, entries=tuple(entries))


def _invalid(field: str, detail: str) -> Exception:
    return bad_request("invalid_config", f"{_CONFIG} field {field!r} {detail}", param=_CONFIG)
