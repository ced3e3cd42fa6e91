"""Task metrics with standard errors.

Mean metrics (exact match, accuracy, top-1, pass@1) are the mean of per-sample verdicts; their standard error
is the sample standard deviation over sqrt(n), i.e. sqrt(p(1-p)/(n-1)) — the same estimator lm-eval reports.
Corpus metrics (Matthews correlation for CoLA, Pearson/Spearman for STS-B, F1) are not means of per-sample
values, so their standard error is a seeded bootstrap over samples.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

MEAN_METRICS = ("accuracy", "exact_match", "pass@1", "top1")
BOOTSTRAP_ITERS = 1000


def mean_and_stderr(verdicts: Sequence[bool]) -> tuple[float, float]:
    n = len(verdicts)
    if n == 0:
        return float("nan"), float("nan")
    p = sum(bool(v) for v in verdicts) / n
    stderr = math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else float("nan")
    return p, stderr


def matthews_corrcoef(gold: Sequence[int], predicted: Sequence[int]) -> float:
    """Multi-class MCC (Gorodkin's R_K); 0 when either side is constant, as scikit-learn defines it."""
    gold_a, pred_a = np.asarray(gold), np.asarray(predicted)
    classes = np.union1d(gold_a, pred_a)
    confusion = np.array([[np.sum((gold_a == g) & (pred_a == p)) for p in classes] for g in classes], dtype=float)
    t, p = confusion.sum(axis=1), confusion.sum(axis=0)
    c, s = np.trace(confusion), confusion.sum()
    denominator = math.sqrt(s * s - p @ p) * math.sqrt(s * s - t @ t)
    return 0.0 if denominator == 0 else float((c * s - t @ p) / denominator)


def pearson(gold: Sequence[float], predicted: Sequence[float]) -> float:
    g, p = np.asarray(gold, dtype=float), np.asarray(predicted, dtype=float)
    g, p = g - g.mean(), p - p.mean()
    denominator = math.sqrt(float(g @ g) * float(p @ p))
    return float("nan") if denominator == 0 else float(g @ p / denominator)


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=float)
    ranks[order] = np.arange(len(values), dtype=float)
    for value in np.unique(values):  # ties share their mean rank
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(gold: Sequence[float], predicted: Sequence[float]) -> float:
    return pearson(_ranks(np.asarray(gold, dtype=float)), _ranks(np.asarray(predicted, dtype=float)))


def f1_binary(gold: Sequence[int], predicted: Sequence[int]) -> float:
    """F1 of the positive class (label 1), as GLUE reports it for MRPC and QQP."""
    g, p = np.asarray(gold), np.asarray(predicted)
    tp = float(np.sum((g == 1) & (p == 1)))
    fp, fn = float(np.sum((g != 1) & (p == 1))), float(np.sum((g == 1) & (p != 1)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


CORPUS_METRICS: dict[str, Callable[[Sequence[Any], Sequence[Any]], float]] = {
    "mcc": matthews_corrcoef, "pearson": pearson, "spearman": spearman, "f1": f1_binary,
}
METRICS = tuple(sorted((*MEAN_METRICS, *CORPUS_METRICS)))


def bootstrap_stderr(metric: Callable[[Sequence[Any], Sequence[Any]], float], gold: Sequence[Any],
                     predicted: Sequence[Any], iters: int = BOOTSTRAP_ITERS, seed: int = 0) -> float:
    """Standard deviation of the metric over resamples (with replacement) of the evaluation set."""
    n = len(gold)
    if n < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    g, p = np.asarray(gold), np.asarray(predicted)
    values = [metric(g[idx], p[idx]) for idx in (rng.integers(0, n, n) for _ in range(iters))]
    values = [v for v in values if not math.isnan(v)]
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def score(metric: str, samples: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """(value, standard error) of ``metric`` over per-sample records (``correct``, or ``gold``/``predicted``)."""
    if metric in MEAN_METRICS:
        return mean_and_stderr([bool(s["correct"]) for s in samples])
    if metric in CORPUS_METRICS:
        gold = [s["gold"] for s in samples]
        predicted = [s["predicted"] for s in samples]
        fn = CORPUS_METRICS[metric]
        return (fn(gold, predicted), bootstrap_stderr(fn, gold, predicted)) if samples else (math.nan, math.nan)
    raise ValueError(f"metric={metric!r}; valid metrics: {list(METRICS)}")


def aggregate(task_scores: Sequence[dict[str, Any]], metric: str) -> dict[str, Any]:
    """Unweighted mean over tasks (the papers' "Avg" columns); stderr from independent task errors."""
    values = [s[metric] for s in task_scores]
    errors = [s.get(f"{metric}_stderr", math.nan) for s in task_scores]
    k = len(values)
    return {metric: float(np.mean(values)), f"{metric}_stderr": math.sqrt(sum(e * e for e in errors)) / k,
            "n": int(sum(s["n"] for s in task_scores))}
