"""Training task "language_modeling": domain pre-training of an adapter on unlabelled text.

The base's own self-supervised objective, on the shared frozen base through a LoRA (or, on a
decoder, prefix tuning): masked LM on an encoder (app/training/mlm_head.py for the head,
app/training/masking.py for BERT's rule), next-token prediction on a decoder. The corpus is
read lazily from the dataset's file (app/training/corpus.py); the loop, best checkpoint and
early stop on held-out loss are the other tasks' (app/training/loop.py). The held-out loss,
perplexity and masked-token (or next-token) accuracy are measured before training (step 0)
and at every evaluation. A decoder's adapter is stored as a `generation` adapter.
"""

from __future__ import annotations

import io
import time
from dataclasses import replace
from typing import Any, cast

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load, save
from transformers import PreTrainedModel

from app.base import FrozenBase
from app.errors import bad_request
from app.tasks import GENERATION, LANGUAGE_MODELING
from app.tasks.language_modeling import METHODS_ON
from app.training.corpus import Chunking, Corpus, Source, Window
from app.training.generation import wrap as causal_wrap
from app.training.hyperparameters import Hyperparameters, fill_defaults
from app.training.lm_objective import LanguageObjective, TokenCount, TokenReporter
from app.training.loop import Ticker, TrainLoop, save_files
from app.training.masking import Masker
from app.training.mlm_head import MaskedHead, head_tensors, masked_lm_view
from app.training.preflight import Setup
from app.training.selection import Rule
from app.training.types import TrainingOutcome, TrainingPlan, TrainingReporter
from app.training.view import build_view

__all__ = ["check_language_plan", "train_language_modeling", "window_length"]

LOSS_RULE = Rule("validation_loss", criterion="loss", early_stop=True)
WEIGHTS = "adapter_model.safetensors"


def check_language_plan(
    plan: TrainingPlan, base: FrozenBase, hp: Hyperparameters, *, cap: int
) -> None:
    """The submit-time checks of a language_modeling job on this base; 400 naming the field."""
    allowed = METHODS_ON[base.kind]
    if plan.method not in allowed:
        raise bad_request(
            "unsupported_method",
            f"method {plan.method!r} cannot train language_modeling on this {base.kind}; "
            f"use one of {list(allowed)}",
            param="method",
        )
    if base.kind == "encoder" and base.tokenizer.mask_token_id is None:
        raise bad_request(
            "unsupported_base", "this encoder's tokenizer has no mask token", param="task"
        )
    length = window_length(hp, cap)
    if hp.stride is not None and hp.stride >= length // 2:
        raise bad_request(
            "invalid_hyperparameter",
            f"stride {hp.stride} >= max_length {length} / 2",
            param="hyperparameters.stride",
        )
    if hp.whole_word_mask and (base.kind != "encoder" or not base.tokenizer.is_fast):
        raise bad_request(
            "invalid_hyperparameter",
            "whole_word_mask needs an encoder base with a fast tokenizer",
            param="hyperparameters.whole_word_mask",
        )
    if hp.keep_head and base.kind != "encoder":
        raise bad_request(
            "invalid_hyperparameter",
            "keep_head is for encoders: a decoder's LM head is the base's own",
            param="hyperparameters.keep_head",
        )


def train_language_modeling(
    plan: TrainingPlan,
    *,
    base: FrozenBase,
    setup: Setup,
    reporter: TrainingReporter,
    tick: Ticker,
    token_budget: int | None = None,
) -> TrainingOutcome:
    """Train one domain adapter; return its PEFT files (the MLM head only with keep_head)."""
    started = time.monotonic()
    plan = replace(plan, method="lora") if plan.method == "auto" else plan
    encoder = base.kind == "encoder"
    chunking = _chunking(setup, encoder=encoder)
    corpus = Corpus(Source(plan.corpus, plan.train_rows), base.tokenizer, chunking)
    hp = _filled(setup, plan, windows=len(corpus), chunking=chunking)
    torch.manual_seed(hp.seed)
    held = _held_out(corpus, plan, base, chunking, reporter)
    model, head = _model(base, plan, hp, setup)
    counter = TokenCount(deadline=_deadline(hp, started))
    objective = LanguageObjective(
        pad_id=int(base.tokenizer.pad_token_id or 0),
        device=base.device,
        eval_batch_size=max(hp.batch_size, 32),
        masker=_masker(base, hp) if encoder else None,
        counter=counter,
    )
    tokens = TokenReporter(
        reporter, counter, tokens_per_step=corpus.tokens_per_window * hp.batch_size
    )
    _announce(reporter, corpus, held, head, hp, encoder=encoder)
    loop = TrainLoop(
        plan, base, model, hp, tokens, tick,
        token_budget=token_budget, rule=LOSS_RULE, objective=objective,
    )  # fmt: skip
    # The loop takes len() of its training examples and hands them to the objective, which
    # streams the corpus; it never indexes them, so a lazy corpus stands in for a list.
    train = cast(list[Any], corpus)
    model.load_state_dict(loop.run(train, held, evaluate_start=True), strict=False)
    return _outcome(model, loop, hp, head=head, tokens=counter.seen, encoder=encoder)


def _outcome(
    model: PeftModel,
    loop: TrainLoop,
    hp: Hyperparameters,
    *,
    head: MaskedHead | None,
    tokens: int,
    encoder: bool,
) -> TrainingOutcome:
    """The run's files (the head added with keep_head) and what the job shows."""
    files = save_files(model)
    if head is not None and hp.keep_head:
        files[WEIGHTS] = _with_head(files[WEIGHTS], head_tensors(_view(model)))
    selection = {
        **LOSS_RULE.as_json(),
        "planned_steps": loop.steps.planned,
        "steps": loop.steps.run,
        "stopped_early": loop.steps.stopped_early,
        "tokens": tokens,
        "objective": "masked_lm" if encoder else "causal_lm",
    }
    if head is not None:
        selection["head"] = {**head.as_json(), "kept": hp.keep_head}
    return TrainingOutcome(
        files=files,
        metrics=loop.best_metrics,
        history=loop.history,
        best=loop.best,
        hyperparameters=hp.model_dump(),
        selection=selection,
        task=None if encoder else GENERATION,
    )


def _chunking(setup: Setup, *, encoder: bool) -> Chunking:
    """Windows of max_length tokens (default: 128, or less where the base takes less)
    overlapping by stride (default: an eighth of them)."""
    length = window_length(setup.hp, setup.max_length_cap)
    stride = setup.hp.stride if setup.hp.stride is not None else length // 8
    return Chunking(
        max_length=length, stride=stride, offsets=setup.hp.whole_word_mask, end_of_text=not encoder
    )


def window_length(hp: Hyperparameters, cap: int) -> int:
    """max_length, else 128 tokens or the base's cap where that is less."""
    return hp.max_length or min(cap, 128)


def _filled(
    setup: Setup, plan: TrainingPlan, *, windows: int, chunking: Chunking
) -> Hyperparameters:
    """The data-driven defaults, with the corpus's windows as the rows."""
    length = chunking.max_length
    hp = fill_defaults(
        setup.hp, method=plan.method, rows=windows, lengths=[length], max_tokens=length
    )
    return hp.model_copy(update={"max_length": length, "stride": chunking.stride})


def _held_out(
    corpus: Corpus,
    plan: TrainingPlan,
    base: FrozenBase,
    chunking: Chunking,
    reporter: TrainingReporter,
) -> list[Window]:
    """The user's validation rows, else the corpus's held-out slice, else (a corpus too small
    to spare documents) its first training windows, said in an event."""
    if plan.validation_rows:
        return Corpus(Source(None, plan.validation_rows), base.tokenizer, chunking).held_out_all()
    held = corpus.held_out()
    if held:
        return held
    reporter.event(
        "info",
        {"message": "too few documents to hold any out: evaluating on training windows"},
    )
    first: list[Window] = []
    for window in corpus.training():
        first.append(window)
        if len(first) >= 64:
            break
    return first


def _model(
    base: FrozenBase, plan: TrainingPlan, hp: Hyperparameters, setup: Setup
) -> tuple[PeftModel, MaskedHead | None]:
    if base.kind == "decoder":
        view = build_view(base, task=GENERATION, num_labels=0)
        return causal_wrap(view, plan.method, hp, targets=setup.targets), None
    view, head = masked_lm_view(base, task=LANGUAGE_MODELING)
    trained = [p for p in view.parameters() if p.requires_grad]
    config = LoraConfig(
        r=hp.rank,
        lora_alpha=hp.alpha or 2 * hp.rank,  # type: ignore[arg-type]
        lora_dropout=hp.dropout,
        target_modules=setup.targets if setup.targets is not None else hp.target_modules,
        exclude_modules=["cls.predictions.transform.dense"],  # the head is not adapted
    )
    model: PeftModel = get_peft_model(view, config)
    for param in trained:  # PEFT froze every base parameter; a new head trains with the LoRA
        param.requires_grad_(True)
    return model, head


def _view(model: PeftModel) -> PreTrainedModel:
    return cast(PreTrainedModel, model.get_base_model())


def _with_head(weights: bytes, head: dict[str, torch.Tensor]) -> bytes:
    """The adapter's safetensors with the MLM head's tensors added under their own names."""
    tensors = dict(load(weights))
    tensors.update(head)
    buffer = io.BytesIO(save(tensors, metadata={"format": "pt"}))
    return buffer.getvalue()


def _deadline(hp: Hyperparameters, started: float) -> float | None:
    return started + hp.budget_seconds if "budget_seconds" in hp.model_fields_set else None


def _announce(
    reporter: TrainingReporter,
    corpus: Corpus,
    held: list[Window],
    head: MaskedHead | None,
    hp: Hyperparameters,
    *,
    encoder: bool,
) -> None:
    objective = "masked LM" if encoder else "causal LM"
    reporter.event(
        "info",
        {
            "message": f"{objective} on about {len(corpus)} windows of {hp.max_length} tokens "
            f"(stride {hp.stride}); {len(held)} held-out windows",
            "estimated_windows": len(corpus),
            "held_out_windows": len(held),
        },
    )
    if head is not None:
        fate = "stored with the adapter (keep_head)" if hp.keep_head else "discarded after training"
        source = "the checkpoint's, frozen" if head.source == "checkpoint" else "new, tied, trained"
        reporter.event(
            "info", {"message": f"MLM head ({source}) is {fate}", "head": head.as_json()}
        )


def _masker(base: FrozenBase, hp: Hyperparameters) -> Masker:
    return Masker(
        base.tokenizer, probability=hp.mask_probability, whole_word=hp.whole_word_mask, seed=hp.seed
    )
