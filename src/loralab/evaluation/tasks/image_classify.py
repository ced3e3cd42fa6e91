"""``type: classify`` — image classification by the fine-tuned head, top-1 accuracy.

No fields beyond the common ones; the rows carry ``pixel_values`` (already sized for the model) and ``labels``,
decoded one batch at a time (:class:`loralab.data.vision.ImageRecords`).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from tqdm.auto import tqdm

from loralab.evaluation.tasks.base import Records, TaskOutput, TaskType

if TYPE_CHECKING:
    from torch import nn


class ImageClassifyTask(TaskType):
    type_name: ClassVar[str] = "classify"
    metrics = ("top1",)

    @classmethod
    def run(cls, tasks: Sequence[TaskType], model: nn.Module, tokenizer: Any, records: dict[str, Records],
            out_dir: Path, progress: bool) -> dict[str, TaskOutput]:
        return {t.name: t.classify(model, records[t.name], progress)
                for t in tasks if isinstance(t, ImageClassifyTask)}

    def classify(self, model: nn.Module, records: Records, progress: bool) -> TaskOutput:
        import torch

        model.eval()
        device = next(model.parameters()).device
        batch_size = int(self.cfg.batch_size)
        samples = []
        for start in tqdm(range(0, len(records), batch_size), desc=f"classifying {self.name}",
                          disable=not progress, leave=False):
            chunk = records[start:start + batch_size]
            pixels = torch.stack([torch.as_tensor(r["pixel_values"]) for r in chunk]).to(device)
            with torch.no_grad():
                predicted = model(pixel_values=pixels).logits.argmax(-1).tolist()
            for record, pred in zip(chunk, predicted):
                samples.append({"gold": int(record["labels"]), "predicted": int(pred),
                                "correct": int(pred) == int(record["labels"])})
        return samples, {}
