"""Streamed text deltas add up to the final text whatever the tokens and stop strings, a held
back tail never leaks a stop string, and a stream ends with its job's error or cancels it."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import SwitchyardError
from app.runtime.generation import GenerateRequest, GenOutput
from app.runtime.sampling import GenerationParams, find_stop
from app.runtime.streaming import GenerationStream, RowEnd, TextDelta, stable_text

# A token's text, and whether it ends in half a character: a byte-level tokenizer decodes a
# sequence ending there with a trailing U+FFFD, which the next token's bytes complete.
PIECES = st.lists(
    st.tuples(st.text(alphabet="ab ", max_size=3), st.booleans()), min_size=1, max_size=12
)
STOPS = st.lists(st.text(alphabet="ab ", min_size=1, max_size=3), max_size=3)


def decode(pieces: list[tuple[str, bool]], ids: list[int]) -> str:
    partial = "\ufffd" if ids and pieces[ids[-1]][1] else ""
    return "".join(pieces[i][0] for i in ids) + partial


def simulate(pieces: list[tuple[str, bool]], stops: list[str]) -> tuple[list[str], str, str]:
    """Drive a stream as the engine would: (deltas, held-back rest, final text)."""
    outcome: dict[str, str] = {}

    async def main() -> list[str]:
        job = GenerateRequest(key=None, prompts=[[0]], params=GenerationParams(stop=stops))
        stream = GenerationStream(
            job,
            decode=lambda ids: decode(pieces, ids),
            timeout_s=5,
            on_end=lambda status: outcome.update(status=status),
        )
        future: asyncio.Future[list[GenOutput]] = asyncio.get_running_loop().create_future()
        stream.attach(future)
        final = "".join(text for text, _partial in pieces)  # the row's whole characters
        ids: list[int] = []
        for i in range(len(pieces)):
            ids.append(i)
            text = decode(pieces, ids)
            cut = find_stop(text, stops)
            if cut is not None:
                final = text[:cut]
                break
            if i < len(pieces) - 1:
                stream.token(0, list(ids))
        outcome["final"] = final
        stream.finish(
            0, GenOutput(text=final, token_ids=ids, finish_reason="stop", prompt_tokens=1)
        )
        future.set_result([])
        deltas = []
        async for event in stream.events():
            if isinstance(event, TextDelta):
                deltas.append(event.text)
            else:
                assert isinstance(event, RowEnd)
                outcome["rest"] = event.text
        return deltas

    deltas = asyncio.run(main())
    assert outcome["status"] == "ok"
    return deltas, outcome["rest"], outcome["final"]


@settings(max_examples=200, deadline=None)
@given(PIECES, STOPS)
def test_deltas_add_up_to_the_final_text(pieces: list[tuple[str, bool]], stops: list[str]) -> None:
    deltas, rest, final = simulate(pieces, stops)
    assert "".join(deltas) + rest == final
    assert all(d and "\ufffd" not in d for d in deltas)  # no empty chunk, no half character
    assert find_stop("".join(deltas), stops) is None  # a stop string is never sent


def test_a_tail_that_may_become_a_stop_is_held_back() -> None:
    assert stable_text("hello wo", ["world"]) == "hello "
    assert stable_text("hello w\ufffd", []) == "hello w"
    assert stable_text("hello", ["xyz"]) == "hello"


def test_the_jobs_error_ends_the_stream_and_leaving_cancels_it() -> None:
    statuses: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        failed = GenerateRequest(key=None, prompts=[[0]], params=GenerationParams())
        stream = GenerationStream(failed, decode=str, timeout_s=5, on_end=statuses.append)
        future: asyncio.Future[list[GenOutput]] = loop.create_future()
        stream.attach(future)
        future.set_exception(SwitchyardError(503, "shutting_down", "service is stopping"))
        with pytest.raises(SwitchyardError, match="stopping"):
            async for _ in stream.events():
                pass
        left = GenerateRequest(key=None, prompts=[[0]], params=GenerationParams())
        stream = GenerationStream(
            left, decode=lambda ids: "x" * len(ids), timeout_s=5, on_end=statuses.append
        )
        pending: asyncio.Future[list[GenOutput]] = loop.create_future()
        pending.add_done_callback(lambda f: setattr(left, "cancelled", f.cancelled()))
        stream.attach(pending)
        stream.token(0, [1])
        events = stream.events()
        assert await anext(events) == TextDelta(0, "x")
        await events.aclose()
        await asyncio.sleep(0)  # done callbacks run on the loop's next turn
        assert pending.cancelled() and left.cancelled

    asyncio.run(main())
    assert statuses == ["shutting_down", "cancelled"]
