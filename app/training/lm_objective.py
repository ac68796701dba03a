"""What a `language_modeling` run brings to the one training loop (app/training/loop.py).

Training examples are a lazy `Corpus` (app/training/corpus.py): batches are drawn from its
shuffled stream of windows, never from a list of the whole corpus. Evaluation examples are
the held-out windows. On an encoder the batch is masked by BERT's rule (app/training/masking.py),
and every evaluation masks the held-out windows with the same seed, so evaluations compare;
on a decoder every real token after the first is predicted. Progress and ETA count tokens.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from app.tasks.base import IGNORE
from app.training.corpus import Corpus, Window
from app.training.masking import Masker
from app.training.objectives import Judged
from app.training.stepping import Batch, label_weight, next_token_weight
from app.training.types import TrainingReporter

Pause = Callable[[], None]
METRIC = "loss"
EVAL_SEED = 1234  # held-out masks: the same at every evaluation of every run
# A small held-out slice masks few tokens (20 short reviews: 26 at 15%); it is masked again
# with further draws, up to this many times, until about EVAL_MASKED tokens are measured.
EVAL_MASKED = 2000
EVAL_REPEATS = 8


@dataclass
class TokenCount:
    """Tokens a run has trained on, and the deadline `budget_seconds` set (None: none)."""

    seen: int = 0
    deadline: float | None = None

    def expired(self) -> bool:
        """Whether the run's time budget is spent."""
        return self.deadline is not None and time.monotonic() >= self.deadline


@dataclass
class LanguageObjective:
    """Masked LM (`masker` set) or causal LM over corpus windows; lower held-out loss wins."""

    pad_id: int
    device: torch.device
    eval_batch_size: int
    masker: Masker | None = None
    counter: TokenCount = field(default_factory=TokenCount)
    metric: str = METRIC

    def batches(
        self, examples: Any, *, batch_size: int, shuffle: bool, seed: int
    ) -> Iterator[Batch]:
        """Training batches from a corpus (endless, until the loop's last step or the time
        budget), or evaluation batches from held-out windows."""
        if isinstance(examples, Corpus):
            return self._training(examples, batch_size=batch_size, seed=seed)
        return self._fixed(examples, batch_size=batch_size)

    def _training(self, corpus: Corpus, *, batch_size: int, seed: int) -> Iterator[Batch]:
        chunk: list[Window] = []
        for window in corpus.shuffled(seed=seed):
            chunk.append(window)
            if len(chunk) == batch_size:
                if self.counter.expired():
                    return
                batch = self._batch(chunk, self.masker)
                self.counter.seen += int(batch["attention_mask"].sum())
                yield batch
                chunk = []

    def _fixed(self, windows: Sequence[Window], *, batch_size: int) -> Iterator[Batch]:
        masker = self._eval_masker()
        if masker is not None:  # one masker: each repeat draws other masks, the same each time
            tokens = sum(len(w.ids) - sum(w.special) for w in windows)
            wanted = math.ceil(EVAL_MASKED / max(1.0, masker.probability * tokens))
            windows = list(windows) * max(1, min(EVAL_REPEATS, wanted))
        for start in range(0, len(windows), batch_size):
            yield self._batch(list(windows[start : start + batch_size]), masker)

    def _eval_masker(self) -> Masker | None:
        if self.masker is None:
            return None
        m = self.masker
        return Masker(
            m.tokenizer, probability=m.probability, whole_word=m.whole_word, seed=EVAL_SEED
        )

    def _batch(self, chunk: list[Window], masker: Masker | None) -> Batch:
        width = max(len(w.ids) for w in chunk)
        ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        special = torch.ones((len(chunk), width), dtype=torch.bool)
        offsets = torch.zeros((len(chunk), width, 2), dtype=torch.long)
        for n, window in enumerate(chunk):
            ids[n, : len(window.ids)] = torch.tensor(window.ids)
            mask[n, : len(window.ids)] = 1
            special[n, : len(window.ids)] = torch.tensor(window.special, dtype=torch.bool)
            if window.offsets is not None:
                offsets[n, : len(window.ids)] = torch.tensor(window.offsets)
        if masker is not None:
            spans = offsets if masker.whole_word else None
            masked = masker.mask(ids, special=special, offsets=spans)
            ids, labels = masked.input_ids, masked.labels
        else:
            labels = ids.masked_fill(mask == 0, IGNORE)
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        return {k: v.to(self.device) for k, v in batch.items()}

    def weight(self, batch: Batch) -> int:
        """Masked tokens (encoder), or predicted next tokens (decoder)."""
        return label_weight(batch) if self.masker is not None else next_token_weight(batch)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, examples: Any, *, pause: Pause) -> Judged:
        """Held-out loss, perplexity and the share of predicted tokens right."""
        model.eval()
        loss_sum, right, count = 0.0, 0, 0
        for batch in self._fixed(examples, batch_size=self.eval_batch_size):
            pause()
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            logits, labels = _aligned(logits.logits, batch["labels"], causal=self.masker is None)
            keep = labels != IGNORE
            loss_sum += float(F.cross_entropy(logits[keep], labels[keep], reduction="sum"))
            right += int((logits[keep].argmax(dim=-1) == labels[keep]).sum())
            count += int(keep.sum())
        loss = loss_sum / max(count, 1)
        accuracy = "masked_accuracy" if self.masker is not None else "token_accuracy"
        metrics = {
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            accuracy: right / max(count, 1),
            "tokens": float(count),
        }
        return Judged(entry=metrics, metrics=metrics, score=-loss, value=loss)


def _aligned(
    logits: torch.Tensor, labels: torch.Tensor, *, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    if causal:  # position t predicts token t + 1
        return logits[:, :-1].float(), labels[:, 1:]
    return logits.float(), labels


class TokenReporter:
    """The job's progress in tokens: `step` and `total_steps` count training tokens, so the
    ETA extrapolates the token rate. Events pass through."""

    def __init__(
        self, inner: TrainingReporter, counter: TokenCount, *, tokens_per_step: float
    ) -> None:
        self.inner, self.counter, self.tokens_per_step = inner, counter, tokens_per_step

    def progress(self, *, step: int, total_steps: int, epoch: float) -> None:
        """Steps turned into tokens seen and tokens planned."""
        planned = max(round(total_steps * self.tokens_per_step), self.counter.seen, 1)
        self.inner.progress(step=self.counter.seen, total_steps=planned, epoch=epoch)

    def event(self, kind: str, data: dict[str, Any]) -> None:
        """Forwarded."""
        self.inner.event(kind, data)
