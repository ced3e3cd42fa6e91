"""Commonsense reasoning: Commonsense-170K for training and the eight evaluation sets (SDS-LoRA Table 1).

Each evaluation row is read in its hub schema and given the fields of both protocols:

* LLM-Adapters' generative protocol (Hu et al., 2023; also used by DoRA): ``instruction`` in the data set's
  question/options/"Answer format" layout, ``input`` (empty), ``output`` ("the correct answer is X") and
  ``answer`` — the keyword the model must write (``true``/``false``, ``solution1``, ``answer3``,
  ``ending2``, ``option1``). These are the fields of LLM-Adapters' own ``test.json`` files, so those files can
  be used directly too (rows that already have ``instruction`` and ``answer`` pass through unchanged).
* lm-evaluation-harness' log-likelihood protocol: ``lm_text`` (the context), ``lm_choices`` (the
  continuations) and ``lm_target`` (the gold index), in the harness' default formats for boolq, piqa, siqa,
  hellaswag, winogrande, arc_easy, arc_challenge and openbookqa. WinoGrande scores partial sentences: there
  ``lm_text`` is the gold index, ``lm_choices`` the two contexts and ``lm_target`` the shared continuation
  (the harness' "multiple input" form).
"""
from __future__ import annotations

import re
from typing import Any, Callable

from loralab.data.hub import load_records, require_fields
from loralab.errors import ConfigError, DatasetUnavailableError

Row = dict[str, Any]


def _options(prefix: str, texts: list[str], separator: str = " ") -> tuple[str, str]:
    """'Answer1: a Answer2: b' and 'answer1/answer2' for a list of option texts.

    LLM-Adapters' test files (and the Commonsense-170K training mix) join the options with one space; only
    PIQA separates its two solutions with a blank line."""
    block = separator.join(f"{prefix.capitalize()}{i + 1}: {t}" for i, t in enumerate(texts))
    keys = "/".join(f"{prefix}{i + 1}" for i in range(len(texts)))
    return block, keys


def _generative(instruction: str, answer: str) -> Row:
    return {"instruction": instruction, "input": "", "output": f"the correct answer is {answer}", "answer": answer}


def _boolq(row: Row) -> Row:
    truth = bool(row["answer"]) if "answer" in row and row["answer"] is not None else bool(row["label"])
    answer = "true" if truth else "false"
    question = row["question"].rstrip("?")
    return {
        **_generative(f"Please answer the following question with true or false, question: {question}?\n\n"
                      f"Answer format: true/false", answer),
        "lm_text": f"{row['passage']}\nQuestion: {question}?\nAnswer:", "lm_choices": ["no", "yes"],
        "lm_target": int(truth),
    }


def _piqa(row: Row) -> Row:
    label = int(row["label"])
    block, keys = _options("solution", [row["sol1"], row["sol2"]], separator="\n\n")
    return {
        **_generative(f"Please choose the correct solution to the question: {row['goal']}\n\n{block}\n\n"
                      f"Answer format: {keys}", f"solution{label + 1}"),
        "lm_text": f"Question: {row['goal']}\nAnswer:", "lm_choices": [row["sol1"], row["sol2"]], "lm_target": label,
    }


def _siqa(row: Row) -> Row:
    label = int(row["label"])  # "1".."3" in the hub copy
    texts = [row["answerA"], row["answerB"], row["answerC"]]
    block, keys = _options("answer", texts)
    return {
        **_generative(f"Please choose the correct answer to the question: {row['context']} {row['question']}\n\n"
                      f"{block}\n\nAnswer format: {keys}", f"answer{label}"),
        "lm_text": f"Q: {row['context']} {row['question']}\nA:", "lm_choices": texts, "lm_target": label - 1,
    }


def _hellaswag_clean(text: str) -> str:
    # WikiHow contexts carry bracketed section markers; the harness turns " [title]" into a sentence break
    # and drops the other markers.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(row: Row) -> Row:
    label = int(row["label"])
    block, keys = _options("ending", list(row["endings"]))
    context = f"{row['ctx_a']} {row['ctx_b'].capitalize()}"
    return {
        **_generative(f"Please choose the correct ending to complete the given sentence: "
                      f"{row['activity_label']}: {row['ctx']}\n\n{block}\n\nAnswer format: {keys}",
                      f"ending{label + 1}"),
        "lm_text": _hellaswag_clean(f"{row['activity_label']}: {context}"),
        "lm_choices": [_hellaswag_clean(e) for e in row["endings"]], "lm_target": label,
    }


def _winogrande(row: Row) -> Row:
    answer = int(row["answer"])  # "1" or "2"
    sentence = row["sentence"]
    blank = sentence.index("_")
    block, keys = _options("option", [row["option1"], row["option2"]])
    return {
        **_generative(f"Please choose the correct answer to fill in the blank to complete the given sentence: "
                      f"{sentence}\n\n{block} Answer format: {keys}", f"option{answer}"),  # no blank line
        "lm_text": answer - 1,
        "lm_choices": [sentence[:blank] + row["option1"], sentence[:blank] + row["option2"]],
        "lm_target": sentence[blank + 1:].strip(),
    }


def _multiple_choice(question: str, choices: dict[str, list[str]], answer_key: str) -> Row:
    texts, labels = list(choices["text"]), list(choices["label"])
    gold = labels.index(answer_key.strip())
    block, keys = _options("answer", texts)
    return {
        **_generative(f"Please choose the correct answer to the question: {question}\n\n{block}\n\n"
                      f"Answer format: {keys}", f"answer{gold + 1}"),
        "lm_choices": texts, "lm_target": gold,
    }


def _arc(row: Row) -> Row:
    return {**_multiple_choice(row["question"], row["choices"], row["answerKey"]),
            "lm_text": f"Question: {row['question']}\nAnswer:"}


def _obqa(row: Row) -> Row:
    return {**_multiple_choice(row["question_stem"], row["choices"], row["answerKey"]),
            "lm_text": row["question_stem"]}


# task → (fields of the hub schema, converter)
TASKS: dict[str, tuple[list[str], Callable[[Row], Row]]] = {
    "boolq": (["question", "passage"], _boolq),
    "piqa": (["goal", "sol1", "sol2", "label"], _piqa),
    "siqa": (["context", "question", "answerA", "answerB", "answerC", "label"], _siqa),
    "hellaswag": (["activity_label", "ctx_a", "ctx_b", "ctx", "endings", "label"], _hellaswag),
    "winogrande": (["sentence", "option1", "option2", "answer"], _winogrande),
    "arc_e": (["question", "choices", "answerKey"], _arc),
    "arc_c": (["question", "choices", "answerKey"], _arc),
    "obqa": (["question_stem", "choices", "answerKey"], _obqa),
}


def commonsense_records(task: str, hub_id: str | None = None, name: str | None = None, split: str = "test",
                        path: str | None = None, limit: int | None = None,
                        override_key: str = "eval.tasks.0.data.path") -> list[Row]:
    """One evaluation set's rows with the LLM-Adapters and lm-eval fields added (see the module docstring)."""
    if task not in TASKS:
        raise ConfigError(f"commonsense task={task!r}; valid tasks: {sorted(TASKS)}")
    rows = load_records(hub_id, name, split, path, limit, override_key)
    if rows and "instruction" in rows[0] and "answer" in rows[0]:
        require_fields(rows, ["instruction", "answer"], f"{task} ({path or hub_id})")
        return [{**row, "input": row.get("input") or ""} for row in rows]  # LLM-Adapters' own test.json
    fields, convert = TASKS[task]
    require_fields(rows, fields, f"{task} ({path or hub_id})")
    out = []
    for i, row in enumerate(rows):
        try:
            out.append({**row, **convert(row)})
        except (ValueError, KeyError, TypeError) as err:
            raise DatasetUnavailableError(
                f"{task} ({path or hub_id}): row {i} does not fit the {task} schema {fields}: "
                f"{type(err).__name__}: {err}"
            ) from err
    return out


def commonsense170k_records(hub_id: str | None = "zwhe99/commonsense_170k", name: str | None = None,
                            split: str = "train", path: str | None = None, limit: int | None = None,
                            override_key: str = "dataset.train.path") -> list[Row]:
    """LLM-Adapters' training mixture: ``instruction``, ``input`` (empty in practice), ``output``, ``answer``."""
    rows = load_records(hub_id, name, split, path, limit, override_key)
    require_fields(rows, ["instruction", "output"], f"Commonsense-170K ({path or hub_id})")
    return [{**row, "input": row.get("input") or ""} for row in rows]
