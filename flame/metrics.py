"""Classification metrics that aggregate correctly across nodes.

Ratios (precision, recall, F1, accuracy) are computed from summed confusion
counts, never averaged; the decision threshold is chosen from summed score
histograms, so the pooled validation rows decide it without leaving their nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

# Score histogram resolution: thresholds are picked on these bin edges.
HISTOGRAM_BINS = 500
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class ConfusionCounts:
    """True/false positives/negatives at one threshold; they add up across nodes."""

    tp: int
    fp: int
    fn: int
    tn: int

    @classmethod
    def at_threshold(
        cls, labels: np.ndarray, scores: np.ndarray, threshold: float
    ) -> ConfusionCounts:
        truth = labels.astype(bool)
        flagged = scores >= threshold
        return cls(
            tp=int(np.sum(flagged & truth)),
            fp=int(np.sum(flagged & ~truth)),
            fn=int(np.sum(~flagged & truth)),
            tn=int(np.sum(~flagged & ~truth)),
        )

    def __add__(self, other: ConfusionCounts) -> ConfusionCounts:
        return ConfusionCounts(
            self.tp + other.tp,
            self.fp + other.fp,
            self.fn + other.fn,
            self.tn + other.tn,
        )

    def ratios(self) -> dict[str, float]:
        """Precision, recall, F1 and accuracy; 0.0 where a ratio has no support."""
        flagged = self.tp + self.fp
        actual = self.tp + self.fn
        total = flagged + self.fn + self.tn
        precision = self.tp / flagged if flagged else 0.0
        recall = self.tp / actual if actual else 0.0
        f1 = 2 * self.tp / (flagged + actual) if flagged + actual else 0.0
        accuracy = (self.tp + self.tn) / total if total else 0.0
        return {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "accuracy": accuracy,
        }


def ranking_scores(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """ROC-AUC and PR-AUC (average precision); NaN when one class is absent."""
    if labels.min(initial=0) == labels.max(initial=0):
        return float("nan"), float("nan")
    return (
        float(roc_auc_score(labels, scores)),
        float(average_precision_score(labels, scores)),
    )


def score_histograms(
    labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Counts of positive and of negative scores in HISTOGRAM_BINS bins over [0, 1]."""
    edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    truth = labels.astype(bool)
    positives, _ = np.histogram(scores[truth], bins=edges)
    negatives, _ = np.histogram(scores[~truth], bins=edges)
    return positives.astype(np.int64), negatives.astype(np.int64)


def best_f1_threshold(positives: np.ndarray, negatives: np.ndarray) -> float:
    """The bin edge whose 'score >= edge' rule has the highest F1.

    Ties go to the higher threshold (fewer alerts for the same F1). Without any
    positive the default threshold stays.
    """
    if positives.sum() == 0:
        return DEFAULT_THRESHOLD
    # Flagged counts for a threshold at each lower bin edge: suffix sums.
    tp = np.cumsum(positives[::-1])[::-1]
    fp = np.cumsum(negatives[::-1])[::-1]
    f1 = 2 * tp / (tp + fp + positives.sum())
    best = len(f1) - 1 - int(np.argmax(f1[::-1]))
    return float(best / HISTOGRAM_BINS)
