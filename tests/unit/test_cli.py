"""The `switchyard` CLI against a live tiny service: the console script as a subprocess for
push, train --follow, predict and the error exit codes; the other commands in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerBase

from app import cli_common
from app.cli import main
from app.client import Client
from app.config import Settings
from tests.conftest import peft_adapter
from tests.unit.client.live import LONG_HP, TINY_HP, job_rows, live_service, tiny_base

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def folder(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "sst2"  # pushed under the folder's name
    peft_adapter(tiny_bert_dir, r=4, out=out)
    return out


@pytest.fixture(scope="module")
def url(
    tiny_bert_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    root = tmp_path_factory.mktemp("svc")
    settings = Settings(store=root / "store", max_wait_ms=1.0, _env_file=None)
    with live_service(settings, tiny_base(tiny_bert_dir, tokenizer)) as address:
        yield address


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m app.cli ARGS` with the service in SWITCHYARD_URL."""
    env = {**os.environ, "SWITCHYARD_URL": url, "COLUMNS": "200"}
    env.pop("SWITCHYARD_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(autouse=True)
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables as wide as a terminal of 200 columns, so that ids print whole."""
    monkeypatch.setattr(cli_common.out, "width", 200)
    monkeypatch.setattr(cli_common.err, "width", 200)


def run(url: str, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI in-process: (exit status, stdout, stderr)."""
    code = main(["--url", url, *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_push_and_predict_as_a_subprocess(
    url: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pushed = cli(url, "adapters", "push", str(folder), "--labels", "neg,pos")
    assert pushed.returncode == 0, pushed.stderr
    assert "pushed sst2 v1 (lora, classification)" in pushed.stdout
    human = cli(url, "predict", "sst2", "what a film", "dull")
    assert human.returncode == 0, human.stderr
    assert "what a film" in human.stdout and "sst2 v1" in human.stdout
    code, stdout, _ = run(url, capsys, "--json", "predict", "sst2", "what a film", "--top-k", "1")
    with Client(url) as sy:
        expected = sy.predict("sst2", ["what a film"], parameters={"top_k": 1})
    assert code == 0 and json.loads(stdout) == expected.model_dump(mode="json")


def test_errors_exit_non_zero(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = cli(url, "predict", "nope", "text")
    assert missing.returncode == 1 and missing.stdout == ""
    assert "no adapter" in missing.stderr and "(adapter_not_found, HTTP 404)" in missing.stderr
    assert "Traceback" not in missing.stderr
    code, _, stderr = run(url, capsys, "predict")
    assert code == 2 and "Missing argument" in stderr
    code, _, stderr = run("http://127.0.0.1:9", capsys, "adapters", "ls")  # nothing listens
    assert code == 1 and stderr.startswith("error: ")
    empty = tmp_path / "nothing"
    empty.mkdir()
    code, _, stderr = run(url, capsys, "adapters", "push", str(empty))
    assert code == 1 and "adapter_config.json" in stderr
    code, _, stderr = run(url, capsys, "train", "--adapter", "x", "--data", "x", "--hp", "rank")
    assert code == 1 and "is not KEY=VALUE" in stderr


def test_train_follow_succeeds_and_registers(url: str, tmp_path: Path) -> None:
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in job_rows()))
    hps = [f"--hp={k}={json.dumps(v)}" for k, v in TINY_HP.items()]
    done = cli(url, "train", "--adapter", "trained", "--data", str(data), *hps, "--follow")
    assert done.returncode == 0, done.stderr
    assert "uploaded" in done.stderr and "status: succeeded" in done.stderr
    assert "accuracy" in done.stderr  # each evaluation is printed above the bar
    assert "trained v1" in done.stdout and "succeeded" in done.stdout
    with Client(url) as sy:
        job = sy.list_jobs(limit=1)[0]
        assert (job.adapter, job.status) == ("trained", "succeeded")
        assert sy.get_adapter("trained").latest_version == 1


def test_following_a_failed_job_exits_1(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with Client(url) as sy:
        # One worker: the blocker runs while the doomed job waits; its dataset is then deleted.
        blocker = sy.create_job("blocker", examples=job_rows(), hyperparameters=LONG_HP)
        data = sy.upload_dataset(job_rows(), name="gone")
        doomed = sy.create_job("doomed", training_data=data.id, hyperparameters=TINY_HP)
        sy.delete_dataset(data.id)
        sy.cancel_job(blocker.id)
    code, stdout, stderr = run(url, capsys, "--json", "jobs", "follow", doomed.id)
    assert code == 1
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert lines[-1]["status"] == "failed" and lines[-1]["error"]["code"] == "dataset_not_found"
    assert any(line.get("kind") == "status" for line in lines[:-1])
    assert f"job {doomed.id} failed" in stderr and "dataset_not_found" in stderr


def test_serve_refuses_bad_settings_with_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Checked before anything loads: an open bind without keys.
    monkeypatch.setenv("SWITCHYARD_HOST", "0.0.0.0")
    monkeypatch.delenv("SWITCHYARD_API_KEYS", raising=False)
    assert main(["serve", "--port", "8123"]) == 2
    stderr = capsys.readouterr().err
    assert "invalid settings" in stderr and "not loopback" in stderr


def test_resource_commands_in_process(
    url: str, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        run(
            url,
            capsys,
            "adapters",
            "push",
            str(folder),
            "--name",
            "other",
            "--labels",
            '["a", "b"]',
        )[0]
        == 0
    )
    code, stdout, _ = run(url, capsys, "adapters", "ls", "--json")
    assert code == 0 and {a["name"]: a["labels"] for a in json.loads(stdout)}["other"] == ["a", "b"]
    code, stdout, _ = run(url, capsys, "adapters", "show", "other")
    assert code == 0 and "other (latest v1" in stdout and "upload" in stdout
    code, stdout, _ = run(url, capsys, "adapters", "pin", "other")
    assert code == 0 and "other: pinned (device)" in stdout
    assert "unpinned" in run(url, capsys, "adapters", "unpin", "other")[1]
    code, stdout, _ = run(url, capsys, "adapters", "pull", "other", str(tmp_path / "out"))
    assert code == 0 and (tmp_path / "out" / "adapter_model.safetensors").is_file()
    assert run(url, capsys, "adapters", "rm", "other")[1].strip() == "removed other v1"
    code, _, stderr = run(url, capsys, "adapters", "show", "other")
    assert code == 1 and "adapter_not_found" in stderr

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in job_rows(8)))
    code, stdout, _ = run(url, capsys, "--json", "datasets", "push", str(rows), "--name", "eight")
    dataset = json.loads(stdout)
    assert code == 0 and (dataset["rows"], dataset["name"]) == (8, "eight")
    assert dataset["id"] in run(url, capsys, "datasets", "ls")[1]
    assert "eight" in run(url, capsys, "datasets", "show", dataset["id"])[1]
    assert run(url, capsys, "datasets", "rm", dataset["id"])[0] == 0
    code, _, stderr = run(url, capsys, "train", "--adapter", "x", "--data", "no-such-file")
    assert code == 1 and "neither a file nor a dataset id" in stderr


def test_jobs_and_embed_in_process(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with Client(url) as sy:
        job = sy.create_job("later", examples=job_rows(), hyperparameters=LONG_HP)
    code, stdout, _ = run(url, capsys, "jobs", "cancel", job.id)
    assert code == 0 and stdout.strip() == f"{job.id}: cancelled"
    code, stdout, _ = run(url, capsys, "--json", "jobs", "ls", "--status", "cancelled")
    assert code == 0 and job.id in {j["id"] for j in json.loads(stdout)}
    code, stdout, _ = run(url, capsys, "jobs", "show", job.id)
    assert code == 0 and "cancelled" in stdout and "inline examples" in stdout
    code, stdout, _ = run(url, capsys, "--json", "embed", "a cat", "a dog", "--pooling", "cls")
    vectors = json.loads(stdout)["data"]
    assert code == 0 and [len(v["embedding"]) for v in vectors] == [32, 32]
    code, stdout, _ = run(url, capsys, "embed", "a cat")
    assert code == 0 and "tiny-bert" in stdout and "1.000" in stdout  # normalised by default
    code, _, stderr = run(url, capsys, "embed", "x", "--layer", "99")
    assert code == 1 and "(invalid_layer, HTTP 400)" in stderr
