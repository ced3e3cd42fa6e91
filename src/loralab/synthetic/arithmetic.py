"""The embedded text task: a synthetic arithmetic world and a shifted word-problem task.

Pretraining text (what the embedded base model learns): equations such as ``17+5=22`` and ``19-8=11``, and
short stories followed by their equation ("Ann has 17 pens. Ann finds 5. 17+5=22"). It never contains a
question, the "Q:/A:" layout, nor the phrase "The answer is".

Shifted task (what a method adapts the base to): GSM8K/MetaMathQA-shaped word problems whose solutions write
the equation and end with "The answer is: N", so they are scored by the same answer extraction as GSM8K.

Train and evaluation problems are disjoint by construction: each question is assigned to one split by a
fixed hash of its text, so no evaluation question is ever seen in training. The arithmetic facts themselves
are shared, as GSM8K's train and test share arithmetic: the base model knows them from pretraining, and the
shift to learn is the question/answer layout and the "The answer is: N" convention.
"""
from __future__ import annotations

import hashlib
import random
from typing import Iterator

NAMES = ["Ann", "Ben", "Cara", "Dan", "Eve", "Finn", "Gus", "Hana", "Ivy", "Joe", "Kim", "Leo"]
OBJECTS = ["apples", "pens", "books", "coins", "cards", "shells", "stamps", "cups", "rocks", "keys"]
ADD_VERBS = ["gets", "finds", "buys", "is given"]
SUB_VERBS = ["gives away", "loses", "sells", "uses"]
MAX_OPERAND = 10

# The characters every text of this world is made of (the embedded tokenizer's vocabulary).
ALPHABET = sorted(set("".join(NAMES + OBJECTS + ADD_VERBS + SUB_VERBS) + "0123456789+-=.:?, \nQAThe answris"))


def _split_of(question: str, eval_fraction: float) -> str:
    digest = hashlib.sha256(question.encode()).digest()
    return "eval" if digest[0] / 256.0 < eval_fraction else "train"


def _operands(rng: random.Random) -> tuple[int, int, str]:
    op = rng.choice("+-")
    a, b = rng.randrange(MAX_OPERAND), rng.randrange(MAX_OPERAND)
    if op == "-" and b > a:
        a, b = b, a
    return a, b, op


def _result(a: int, b: int, op: str) -> int:
    return a + b if op == "+" else a - b


def _story(a: int, b: int, op: str, rng: random.Random) -> tuple[str, str, str]:
    """A two-sentence story, its equation and its object, e.g. ("Ann has 7 pens. Ann finds 5.", "7+5=12", "pens")."""
    name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
    verb = rng.choice(ADD_VERBS if op == "+" else SUB_VERBS)
    return f"{name} has {a} {obj}. {name} {verb} {b}.", f"{a}{op}{b}={_result(a, b, op)}", obj


def pretraining_corpus(n_texts: int, seed: int = 0) -> list[str]:
    """Bare equations and stories followed by their equation, half and half."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n_texts):
        a, b, op = _operands(rng)
        if rng.random() < 0.5:
            texts.append(f"{a}{op}{b}={_result(a, b, op)}")
        else:
            story, equation, _ = _story(a, b, op, rng)
            texts.append(f"{story} {equation}")
    return texts


def _problem(a: int, b: int, op: str, rng: random.Random) -> dict[str, str]:
    story, equation, obj = _story(a, b, op, rng)
    result = _result(a, b, op)
    return {
        "question": f"{story} How many {obj} now?",
        "solution": f"{equation}. The answer is: {result}",
        "answer": str(result),
    }


def word_problems(n: int, split: str, seed: int = 0, eval_fraction: float = 0.2) -> list[dict[str, str]]:
    """``n`` word problems of the given split ('train' or 'eval'), deterministic in ``seed``."""
    if split not in ("train", "eval"):
        raise ValueError(f"split={split!r}: valid splits are 'train' and 'eval'")
    rng = random.Random(f"{seed}-{split}")
    return list(_take(_problems_of_split(rng, split, eval_fraction), n))


def _problems_of_split(rng: random.Random, split: str, eval_fraction: float) -> Iterator[dict[str, str]]:
    while True:
        problem = _problem(*_operands(rng), rng)
        if _split_of(problem["question"], eval_fraction) == split:
            yield problem


def _take(it: Iterator[dict[str, str]], n: int) -> Iterator[dict[str, str]]:
    for _, item in zip(range(n), it):
        yield item
