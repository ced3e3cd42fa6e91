"""GSM8K and MATH evaluation records (the MetaMathQA → GSM8K/MATH protocol of SDS-LoRA §4 and LoRAM §3.3).

Rows keep their source schema and gain the two fields the generative protocol reads:

* ``query`` — the question, under the name MetaMathQA's training prompt uses, so the evaluation prompt is
  the training prompt (``${dataset.prompt_template}``) filled with the test question;
* ``answer`` — for MATH, the reference final answer (the last ``\\boxed{}`` of the reference solution, or the
  row's own ``answer`` where a copy ships one, as MATH-500 does). GSM8K's ``answer`` is the reference solution
  ending in ``#### N``; the suite's ``gold_pattern`` reads N from it.
"""
from __future__ import annotations

from typing import Any

from loralab.data.hub import load_records, require_fields
from loralab.errors import DatasetUnavailableError
from loralab.markup import last_boxed


def gsm8k_records(hub_id: str | None = "openai/gsm8k", name: str | None = "main", split: str = "test",
                  path: str | None = None, limit: int | None = None,
                  override_key: str = "eval.tasks.0.data.path") -> list[dict[str, Any]]:
    """GSM8K rows (``question``, ``answer`` = solution ending in ``#### N``) plus ``query``."""
    rows = load_records(hub_id, name, split, path, limit, override_key)
    require_fields(rows, ["question", "answer"], f"GSM8K ({path or hub_id})")
    return [{**row, "query": row["question"]} for row in rows]


def math_records(hub_id: str | None = "DigitalLearningGmbH/MATH-lighteval", name: str | None = None,
                 split: str = "test", path: str | None = None, limit: int | None = None,
                 override_key: str = "eval.tasks.1.data.path") -> list[dict[str, Any]]:
    """MATH rows (``problem``, ``solution`` with ``\\boxed{}``, ``level``, ``type``) plus ``query``/``answer``."""
    rows = load_records(hub_id, name, split, path, limit, override_key)
    require_fields(rows, ["problem", "solution"], f"MATH ({path or hub_id})")
    out = []
    for i, row in enumerate(rows):
        gold = row.get("answer") or last_boxed(row["solution"])
        if not gold:
            raise DatasetUnavailableError(
                f"MATH ({path or hub_id}): row {i} has no reference answer: its solution contains no \\boxed{{}} "
                f"and it has no 'answer' field"
            )
        out.append({**row, "query": row["problem"], "answer": gold})
    return out
