"""``type: sequence_classify`` — sentence (pair) classification or regression by the fine-tuned head (GLUE).

Fields: ``max_length`` (tokens per encoded pair), ``num_labels`` (1: regression, STS-B; default 2),
``extra_metrics`` (recorded beside the headline, e.g. F1 for MRPC). Metrics: ``accuracy`` (the mean of the
verdicts) or a corpus metric (:data:`loralab.evaluation.metrics.CORPUS_METRICS`: MCC, Pearson, Spearman, F1)
with a bootstrap standard error.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from tqdm.auto import tqdm

from loralab.evaluation.metrics import CORPUS_METRICS, score
from loralab.evaluation.tasks.base import Records, TaskOutput, TaskType, choice

if TYPE_CHECKING:
    from torch import nn


class SequenceClassifyTask(TaskType):
    type_name: ClassVar[str] = "sequence_classify"
    required = ("max_length",)
    optional = ("num_labels", "extra_metrics")
    metrics = ("accuracy", *CORPUS_METRICS)

    def check(self) -> None:
        for metric in self.cfg.get("extra_metrics") or []:
            choice(self.cfg, "extra_metrics", metric, self.metrics)

    @classmethod
    def run(cls, tasks: Sequence[TaskType], model: nn.Module, tokenizer: Any, records: dict[str, Records],
            out_dir: Path, progress: bool) -> dict[str, TaskOutput]:
        return {t.name: t.classify(model, tokenizer, records[t.name], progress)
                for t in tasks if isinstance(t, SequenceClassifyTask)}

    def classify(self, model: nn.Module, tokenizer: Any, records: Records, progress: bool) -> TaskOutput:
        import torch

        from loralab.data.training_data import SequenceClassificationCollator, encode_sentences

        task = self.cfg
        model.eval()
        device = next(model.parameters()).device
        regression = int(task.get("num_labels") or 2) == 1
        collate = SequenceClassificationCollator(tokenizer.pad_token_id or 0, regression)
        samples = []
        for start in tqdm(range(0, len(records), task.batch_size), desc=f"classifying {task.name}",
                          disable=not progress, leave=False):
            chunk = list(records[start:start + task.batch_size])
            encoded = encode_sentences(tokenizer, chunk, int(task.max_length))
            batch = collate([{**e, "labels": r["label"]} for e, r in zip(encoded, chunk)])
            batch.pop("labels")
            with torch.no_grad():
                logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            outputs = logits[:, 0].tolist() if regression else logits.argmax(-1).tolist()
            for record, pred in zip(chunk, outputs):
                gold = float(record["label"]) if regression else int(record["label"])
                samples.append({"text_a": record["text_a"], "text_b": record.get("text_b"), "gold": gold,
                                "predicted": pred, "correct": None if regression else pred == gold})
        extras = {}
        for metric in task.get("extra_metrics") or []:
            extras[metric], extras[f"{metric}_stderr"] = score(metric, samples)
        return samples, extras
