"""Pooled evaluation: ratios from summed counts equal those of pooled predictions."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from flame.metrics import ConfusionCounts, best_f1_threshold, score_histograms
from flame.strategy import aggregate_evaluation, region_of, weighted_mean_ignoring_nan


def node_reply(labels: np.ndarray, scores: np.ndarray, region: str) -> RecordDict:
    counts = ConfusionCounts.at_threshold(labels, scores, 0.5)
    positives, negatives = score_histograms(labels, scores)
    return RecordDict(
        {
            "metrics": MetricRecord(
                {
                    "loss": 0.1,
                    "tp": counts.tp,
                    "fp": counts.fp,
                    "fn": counts.fn,
                    "tn": counts.tn,
                    "roc-auc": 0.9,
                    "pr-auc": 0.8,
                    "pos-hist": [int(v) for v in positives],
                    "neg-hist": [int(v) for v in negatives],
                    "num-examples": int(labels.size),
                }
            ),
            "node": ConfigRecord({"region": region}),
        }
    )


def test_aggregated_ratios_equal_pooled_predictions() -> None:
    rng = np.random.default_rng(7)
    labels = (rng.random(3000) < 0.05).astype(int)
    scores = np.clip(rng.normal(0.3 + 0.4 * labels, 0.2), 0, 1)
    # Unequal nodes: a mean of per-node ratios would differ from the pooled one.
    cuts = [slice(0, 300), slice(300, 3000)]
    replies = [
        node_reply(labels[c], scores[c], r)
        for c, r in zip(cuts, ["US", "EU"], strict=True)
    ]

    pooled = aggregate_evaluation(replies, "num-examples")

    expected = ConfusionCounts.at_threshold(labels, scores, 0.5).ratios()
    for name, value in expected.items():
        assert pooled[name] == pytest.approx(value)
    assert pooled["num-examples"] == 3000
    summed = (np.asarray(pooled["pos-hist"]), np.asarray(pooled["neg-hist"]))
    assert best_f1_threshold(*summed) == best_f1_threshold(
        *score_histograms(labels, scores)
    )


def test_weighted_mean_skips_nodes_without_an_auc() -> None:
    assert weighted_mean_ignoring_nan([0.9, float("nan"), 0.6], [1, 5, 2]) == (
        pytest.approx((0.9 + 1.2) / 3)
    )
    assert np.isnan(weighted_mean_ignoring_nan([float("nan")], [4]))


def test_region_of_reply_without_node_record() -> None:
    assert region_of(RecordDict({"metrics": MetricRecord({"a": 1})})) == "unknown"
