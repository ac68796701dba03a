"""The one gate for untrusted text and JSON, used wherever user input enters the service.

JSON allows what the rest of the service cannot hold: `"\\ud800"` is a valid escape for a lone
surrogate that UTF-8 cannot encode (so SQLite, the store's JSON files and every response would
fail on it later, after it was stored), and nesting deep enough to overflow the parser's stack.
Every route body, dataset row, form field and adapter file goes through these functions, so a
bad value is a 400 naming its field before anything is stored.
"""

from __future__ import annotations

import json
from typing import Any

from app.errors import bad_request

# Deep enough for any real adapter config, dataset row or request (they nest 3 to 5 levels);
# shallow enough that no recursive code downstream (pydantic, json.dumps, SQLAlchemy) can hit
# Python's recursion limit on what passed.
MAX_JSON_DEPTH = 32


def check_text(value: str, *, param: str) -> str:
    """`value` if UTF-8 can encode it; a 400 `invalid_text` naming `param` otherwise."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = value[exc.start : exc.end].encode("utf-8", "backslashreplace").decode("ascii")
        raise bad_request(
            "invalid_text",
            f"{param} holds {bad} at character {exc.start}: a lone surrogate, which is valid "
            "in a JSON escape but is not text (UTF-8 cannot encode it)",
            param=param,
        ) from exc
    return value


def check_tree(obj: Any, *, param: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """`obj` (parsed JSON) if every string and key is text and it nests at most `max_depth`.

    Iterative, so the check itself cannot overflow the stack it protects.
    """
    stack: list[tuple[Any, int, str]] = [(obj, 1, param)]
    while stack:
        node, depth, where = stack.pop()
        if isinstance(node, str):
            check_text(node, param=where)
            continue
        if not isinstance(node, (dict, list)):
            continue
        if depth > max_depth:
            raise bad_request(
                "invalid_json",
                f"{param} nests deeper than {max_depth} levels",
                param=param,
            )
        if isinstance(node, dict):
            for key, value in node.items():
                child = f"{where}.{check_text(str(key), param=where)}"
                stack.append((value, depth + 1, child))
        else:
            stack.extend((value, depth + 1, f"{where}[{i}]") for i, value in enumerate(node))
    return obj


def load_json(
    data: bytes | str,
    *,
    what: str,
    param: str,
    max_depth: int = MAX_JSON_DEPTH,
    reject_duplicate_keys: bool = False,
) -> Any:
    """Parse untrusted JSON: UTF-8, no NaN/Infinity literals, bounded depth, text only.

    Every failure is a 400 `invalid_json` (or `invalid_text`) naming `param`; a parser stack
    overflow on absurd nesting is one of them, not a 500.
    """

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if reject_duplicate_keys and len(obj) != len(pairs):
            keys = [k for k, _ in pairs]
            dupes = sorted({k for k in keys if keys.count(k) > 1})
            raise bad_request("invalid_json", f"{what} repeats keys {dupes}", param=param)
        return obj

    def no_constants(token: str) -> Any:
        raise bad_request("invalid_json", f"{what} contains {token}", param=param)

    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        obj = json.loads(text, object_pairs_hook=pairs_hook, parse_constant=no_constants)
    except RecursionError as exc:
        raise bad_request(
            "invalid_json", f"{what} nests deeper than {max_depth} levels", param=param
        ) from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_request(
            "invalid_json", f"{what} is not valid JSON: {_describe(exc)}", param=param
        ) from exc
    except ValueError as exc:  # an integer past Python's 4300-digit conversion limit
        raise bad_request(
            "invalid_json", f"{what} holds an integer longer than 4300 digits", param=param
        ) from exc
    return check_tree(obj, param=param, max_depth=max_depth)


def _describe(exc: UnicodeDecodeError | json.JSONDecodeError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return f"bytes {exc.start}-{exc.end} are not UTF-8"
