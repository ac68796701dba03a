"""Issue 4 on the real packaged base over HTTP: every method x task trains and serves; quality."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import DATASETS
from tests.integration.conftest import LiveServer, read_rows, run_job

pytestmark = pytest.mark.slow

METHODS = ["lora", "prefix", "prompt", "ia3", "linear_probe", "contrastive", "auto"]
# Contrastive pairs need one label a row: other tasks are refused at submission.
CONTRASTIVE_TASKS = ["classification"]
TASKS = ["classification", "multi_label_classification", "regression", "token_classification"]


def _need(folder: str) -> None:
    if not (DATASETS / folder).is_dir():
        pytest.skip(f"../shared/datasets/{folder} is absent")


def _examples(task: str, n: int) -> list[dict[str, Any]]:
    if task == "classification":
        return read_rows(DATASETS / "sst2/train.jsonl", n)
    if task == "multi_label_classification":
        # Two true labels per question: TREC's coarse class and its fine one ("NUM", "NUM:dist").
        rows = read_rows(DATASETS / "trec/train.jsonl", n)
        return [{"text": r["text"], "labels": [r["label"], r["fine_label"]]} for r in rows]
    if task == "regression":
        return read_rows(DATASETS / "stsb/train.jsonl", n)
    return read_rows(DATASETS / "conll2003/train.jsonl", n)


def _check_output(task: str, output: Any) -> None:
    if task == "regression":
        assert isinstance(output["score"], float)
    elif task == "token_classification":
        assert isinstance(output, list)
        for entity in output:
            assert {"entity_group", "score", "word", "start", "end"} <= set(entity)
    else:
        assert isinstance(output, list)
        for item in output:
            assert isinstance(item["label"], str) and 0.0 <= item["score"] <= 1.0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("task", TASKS)
def test_every_method_and_task_trains_and_serves(live: LiveServer, method: str, task: str) -> None:
    for folder in ("sst2", "trec", "stsb", "conll2003"):
        _need(folder)
    name = f"m-{method}-{task}".replace("_", "-")[:60]
    body: dict[str, object] = {
        "adapter": name,
        "task": task,
        "method": method,
        "examples": _examples(task, 48),
        "hyperparameters": {"epochs": 1, "max_steps": 3, "batch_size": 16, "max_length": 48},
    }
    if method == "contrastive" and task not in CONTRASTIVE_TASKS:
        refused = live.http.post("/v1/training-jobs", json=body)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "unsupported_task"
        return
    job = run_job(live, body)
    assert job["status"] == "succeeded", job
    inputs = (
        ["EU rejects German call to boycott British lamb ."]
        if task == ("token_classification")
        else ["a gripping film", {"text": "a man plays", "text_pair": "a man is playing"}]
    )
    response = live.http.post(f"/v1/adapters/{name}/predict", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    assert len(outputs) == len(inputs)
    for output in outputs:
        _check_output(task, output)


def _predict_all(
    live: LiveServer, name: str, inputs: list[Any], parameters: dict[str, Any] | None = None
) -> list[Any]:
    """Outputs for any number of inputs, in requests under max_inputs_per_request."""
    outputs: list[Any] = []
    for start in range(0, len(inputs), 100):
        body = {"inputs": inputs[start : start + 100], "parameters": parameters or {}}
        response = live.http.post(f"/v1/adapters/{name}/predict", json=body)
        assert response.status_code == 200, response.text
        outputs += response.json()["outputs"]
    return outputs


def _f1(found: set[Any], truth: set[Any]) -> float:
    """Micro F1 of predicted items against true ones."""
    precision = len(found & truth) / max(1, len(found))
    recall = len(found & truth) / max(1, len(truth))
    return 2 * precision * recall / max(1e-9, precision + recall)


def _gold_spans(tokens: list[str], tags: list[str]) -> tuple[str, set[tuple[int, int, str]]]:
    """The sentence as text (tokens joined by spaces) and its entity spans in characters."""
    text, spans, starts = "", set(), []
    for token in tokens:
        starts.append(len(text) + (1 if text else 0))
        text = f"{text} {token}" if text else token
    current: list[Any] | None = None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, kind = tag.partition("-")
        if current and (prefix != "I" or kind != current[2]):
            spans.add(tuple(current))
            current = None
        if prefix == "B" or (prefix == "I" and current is None):
            current = [starts[i], starts[i] + len(tokens[i]), kind]
        elif prefix == "I" and current is not None:
            current[1] = starts[i] + len(tokens[i])
    return text, spans


def test_conll_ner_reaches_entity_f1(live: LiveServer) -> None:
    _need("conll2003")
    train = read_rows(DATASETS / "conll2003/train.jsonl", 2000)
    test = read_rows(DATASETS / "conll2003/test.jsonl", 300)
    job = run_job(
        live,
        {"adapter": "conll", "task": "token_classification", "method": "lora", "examples": train},
    )
    assert job["status"] == "succeeded", job
    gold = [_gold_spans(r["tokens"], r["tags"]) for r in test]
    outputs = _predict_all(live, "conll", [text for text, _ in gold])
    found = {
        (i, e["start"], e["end"], e["entity_group"]) for i, out in enumerate(outputs) for e in out
    }
    truth = {(i, *span) for i, (_, spans) in enumerate(gold) for span in spans}
    f1 = _f1(found, truth)
    print(f"CoNLL-2003 entity F1 {f1:.3f} on {len(test)} test sentences")
    assert f1 >= 0.70, f1


def test_stsb_regression_reaches_pearson(live: LiveServer) -> None:
    _need("stsb")
    from scipy.stats import pearsonr

    train = read_rows(DATASETS / "stsb/train.jsonl", 3000)
    dev = read_rows(DATASETS / "stsb/dev.jsonl", 300)
    job = run_job(
        live, {"adapter": "stsb", "task": "regression", "method": "lora", "examples": train}
    )
    assert job["status"] == "succeeded", job
    inputs = [{"text": r["text"], "text_pair": r["text_pair"]} for r in dev]
    outputs = _predict_all(live, "stsb", inputs)
    pearson = pearsonr([o["score"] for o in outputs], [float(r["label"]) for r in dev])[0]
    print(f"STS-B Pearson {pearson:.3f} on {len(dev)} dev pairs")
    assert pearson >= 0.75, pearson


def test_multi_label_and_rte_pairs_train_and_predict(live: LiveServer) -> None:
    for folder in ("rte", "trec"):
        _need(folder)
    rte = read_rows(DATASETS / "rte/train.jsonl", 400)
    job = run_job(
        live,
        {
            "adapter": "rte",
            "task": "classification",
            "method": "lora",
            "examples": rte,
            "hyperparameters": {"epochs": 2, "max_length": 128},
        },
    )
    assert job["status"] == "succeeded", job
    pair = {"text": "A cat sat on the mat.", "text_pair": "An animal is on the mat."}
    out = live.http.post(
        "/v1/adapters/rte/predict", json={"inputs": [pair], "parameters": {"top_k": 2}}
    )
    assert {o["label"] for o in out.json()["outputs"][0]} == {"entailment", "not_entailment"}
    multi = _examples("multi_label_classification", 1500)
    job = run_job(
        live,
        {
            "adapter": "trec-multi",
            "task": "multi_label_classification",
            "method": "lora",
            "examples": multi,
        },
    )
    assert job["status"] == "succeeded", job
    test = read_rows(DATASETS / "trec/test.jsonl", 200)
    outputs = _predict_all(live, "trec-multi", [r["text"] for r in test], {"threshold": 0.5})
    found = {(i, o["label"]) for i, out in enumerate(outputs) for o in out}
    truth = {(i, label) for i, r in enumerate(test) for label in (r["label"], r["fine_label"])}
    f1 = _f1(found, truth)
    print(f"TREC coarse+fine multi-label micro-F1 {f1:.3f} on {len(test)} test questions")
    assert f1 >= 0.70, f1
