"""Metrics that aggregate across nodes: counts, ratios, histograms, thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from flame.metrics import (
    HISTOGRAM_BINS,
    ConfusionCounts,
    best_f1_threshold,
    ranking_scores,
    score_histograms,
)


def test_counts_at_threshold_by_hand() -> None:
    labels = np.array([1, 1, 0, 0, 1])
    scores = np.array([0.9, 0.4, 0.6, 0.1, 0.5])

    counts = ConfusionCounts.at_threshold(labels, scores, 0.5)

    assert counts == ConfusionCounts(tp=2, fp=1, fn=1, tn=1)
    assert counts.ratios() == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "accuracy": 3 / 5}
    )


def test_ratios_without_support_are_zero_not_nan() -> None:
    assert ConfusionCounts(0, 0, 0, 10).ratios() == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "accuracy": 1.0,
    }


def test_ranking_scores_nan_when_one_class_only() -> None:
    roc, pr = ranking_scores(np.zeros(4), np.linspace(0, 1, 4))
    assert np.isnan(roc) and np.isnan(pr)


def test_histograms_count_every_score_once() -> None:
    labels = np.array([1, 0, 0, 1, 0])
    scores = np.array([1.0, 0.0, 0.5, 0.75, 0.999])

    positives, negatives = score_histograms(labels, scores)

    assert positives.sum() == 2 and negatives.sum() == 3
    assert positives[-1] == 1  # a score of exactly 1.0 lands in the last bin
    assert len(positives) == HISTOGRAM_BINS


def test_best_threshold_separates_separable_scores() -> None:
    labels = np.array([0] * 50 + [1] * 5)
    scores = np.concatenate([np.linspace(0.0, 0.3, 50), np.linspace(0.7, 0.9, 5)])

    threshold = best_f1_threshold(*score_histograms(labels, scores))

    flagged = scores >= threshold
    assert np.array_equal(flagged, labels.astype(bool))
    assert threshold > 0.3  # ties go to the highest threshold with that F1


def test_best_threshold_keeps_default_without_positives() -> None:
    negatives = np.ones(HISTOGRAM_BINS, dtype=np.int64)
    assert best_f1_threshold(np.zeros(HISTOGRAM_BINS, dtype=np.int64), negatives) == 0.5


def test_threshold_from_summed_histograms_equals_pooled_choice() -> None:
    rng = np.random.default_rng(3)
    labels = rng.random(2000) < 0.1
    scores = np.clip(rng.normal(0.3 + 0.4 * labels, 0.15), 0, 1)
    halves = [slice(0, 700), slice(700, 2000)]

    per_node = [score_histograms(labels[h], scores[h]) for h in halves]
    positives = per_node[0][0] + per_node[1][0]
    negatives = per_node[0][1] + per_node[1][1]

    assert best_f1_threshold(positives, negatives) == best_f1_threshold(
        *score_histograms(labels, scores)
    )
