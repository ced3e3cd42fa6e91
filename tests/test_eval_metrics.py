"""Metrics and standard errors against reference implementations (scikit-learn, SciPy)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score
from sklearn.metrics import matthews_corrcoef as sk_mcc

from loralab.evaluation.metrics import (
    aggregate,
    bootstrap_stderr,
    f1_binary,
    matthews_corrcoef,
    mean_and_stderr,
    pearson,
    score,
    spearman,
)

RNG = np.random.default_rng(7)


@pytest.mark.parametrize("classes", [2, 3])
def test_mcc_matches_scikit_learn(classes: int) -> None:
    gold = RNG.integers(0, classes, 200)
    noisy = np.where(RNG.random(200) < 0.7, gold, RNG.integers(0, classes, 200))
    assert matthews_corrcoef(gold, noisy) == pytest.approx(sk_mcc(gold, noisy))
    assert matthews_corrcoef(gold, np.zeros_like(gold)) == 0.0  # constant prediction: 0 by definition


def test_correlations_and_f1_match_scipy_and_sklearn() -> None:
    gold = RNG.uniform(0, 5, 100).round(1)  # ties, as STS-B scores have
    predicted = gold + RNG.normal(0, 1, 100)
    assert pearson(gold, predicted) == pytest.approx(pearsonr(gold, predicted)[0])
    assert spearman(gold, predicted) == pytest.approx(spearmanr(gold, predicted)[0])
    labels, guesses = RNG.integers(0, 2, 100), RNG.integers(0, 2, 100)
    assert f1_binary(labels, guesses) == pytest.approx(f1_score(labels, guesses))


def test_mean_metric_stderr_is_the_sample_standard_error() -> None:
    p, se = mean_and_stderr([True, False, True, True])
    assert p == 0.75 and se == pytest.approx(np.std([1, 0, 1, 1], ddof=1) / 2)
    assert score("accuracy", [{"correct": c} for c in (True, False, True, True)]) == (p, se)


def test_bootstrap_stderr_is_seeded_and_of_the_right_size() -> None:
    gold = RNG.integers(0, 2, 400)
    predicted = np.where(RNG.random(400) < 0.8, gold, 1 - gold)
    first = bootstrap_stderr(matthews_corrcoef, gold, predicted)
    assert first == bootstrap_stderr(matthews_corrcoef, gold, predicted)  # same seed, same number
    # the MCC of 400 samples at ~0.6 has a sampling error of a few hundredths, not 0 and not 0.3
    assert 0.01 < first < 0.1
    samples = [{"gold": int(g), "predicted": int(p)} for g, p in zip(gold, predicted)]
    value, stderr = score("mcc", samples)
    assert value == pytest.approx(sk_mcc(gold, predicted)) and stderr == first


def test_suite_average_and_its_stderr() -> None:
    tasks = [{"accuracy": 0.5, "accuracy_stderr": 0.03, "n": 100}, {"accuracy": 0.7, "accuracy_stderr": 0.04, "n": 50}]
    out = aggregate(tasks, "accuracy")
    assert out == {"accuracy": pytest.approx(0.6), "accuracy_stderr": pytest.approx(math.hypot(0.03, 0.04) / 2),
                   "n": 150}


def test_unknown_metric_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="metric='bleu'.*pearson"):
        score("bleu", [])
