"""Browser tests: the real app on a tiny base, served by uvicorn in a thread, opened in headless
Chromium from the Debian packages (driven by Playwright, never a downloaded browser).

Screenshots go to tests/artifacts/ (git-ignored); their paths are listed in the terminal
summary so that CI logs show where to find them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import BertModel, PreTrainedTokenizerBase

from app.base import wrap_base
from tests.browser.live import SAVED

CHROMIUM = Path(os.environ.get("SWITCHYARD_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",  # we run as root in CI containers, where the sandbox cannot start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]

if shutil.which(str(CHROMIUM)) is None:
    pytest.skip(
        f"no Chromium at {CHROMIUM}: `make test` installs the Debian packages chromium and "
        "chromium-driver (apt-get); without apt the browser tests cannot run",
        allow_module_level=True,
    )
playwright_sync = pytest.importorskip(
    "playwright.sync_api", reason="playwright is in the dev extra: pip install -e '.[dev]'"
)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SAVED:
        terminalreporter.write_sep("-", "dashboard screenshots")
        for path in SAVED:
            terminalreporter.write_line(str(path))


@pytest.fixture(scope="module")
def make_base(tiny_bert_dir: Path, tokenizer: PreTrainedTokenizerBase) -> Callable[[], Any]:
    """A fresh tiny frozen base per app: the runtime wraps its layers in place."""

    def make() -> Any:
        model = BertModel.from_pretrained(tiny_bert_dir)
        return wrap_base(
            model, tokenizer, name="tiny-bert", path=tiny_bert_dir, device=torch.device("cpu")
        )

    return make


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context (own sessionStorage); fails the test on any page error or
    console error, which is also where a Content-Security-Policy violation would show."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(30_000)
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    tab.on(
        "console",
        # A refused fetch (401/403/404/409) is logged by Chromium itself; the page handles it.
        lambda msg: (
            problems.append(f"console {msg.type}: {msg.text}")
            if msg.type == "error" and "status of 40" not in msg.text
            else None
        ),
    )
    yield tab
    context.close()
    assert not problems, problems
