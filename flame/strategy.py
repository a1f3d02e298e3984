"""FedAvg with Flame's bookkeeping: per-node metrics, count-based aggregation,
a federated decision threshold, and loud failure when nodes are lost.

Weights are averaged by `num-examples` (training examples, McMahan et al. 2017,
"Communication-Efficient Learning of Deep Networks from Decentralized Data").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from flame.errors import FederationError
from flame.metrics import DEFAULT_THRESHOLD, ConfusionCounts, best_f1_threshold
from flame.records import number_list, scalar
from flame.tracking import RunRecorder

logger = logging.getLogger(__name__)

NODE_RECORD = "node"
METRICS_RECORD = "metrics"


def region_of(content: RecordDict) -> str:
    """The region a reply came from (clients add a `node` ConfigRecord)."""
    node = content.config_records.get(NODE_RECORD)
    return str(node["region"]) if node and "region" in node else "unknown"


def metrics_of(content: RecordDict) -> MetricRecord:
    return next(iter(content.metric_records.values()))


def counts_of(metrics: MetricRecord) -> ConfusionCounts:
    return ConfusionCounts(
        tp=int(scalar(metrics, "tp")),
        fp=int(scalar(metrics, "fp")),
        fn=int(scalar(metrics, "fn")),
        tn=int(scalar(metrics, "tn")),
    )


def weighted_mean_ignoring_nan(
    values: Sequence[float], weights: Sequence[int]
) -> float:
    """Example-weighted mean over nodes where the value is defined.

    A node whose validation rows hold one class only has no ROC-AUC; it is left
    out instead of turning the mean into NaN.
    """
    pairs = [(v, w) for v, w in zip(values, weights, strict=True) if not math.isnan(v)]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else float("nan")


def aggregate_evaluation(contents: list[RecordDict], weight_key: str) -> MetricRecord:
    """Pool node evaluations: ratios from summed counts, AUCs example-weighted."""
    metrics = [metrics_of(content) for content in contents]
    counts = sum((counts_of(m) for m in metrics), ConfusionCounts(0, 0, 0, 0))
    weights = [int(scalar(m, weight_key)) for m in metrics]
    pooled: dict[str, float | int | list[int]] = {}
    pooled.update(counts.ratios())
    for key in ("loss", "roc-auc", "pr-auc"):
        values = [scalar(m, key) for m in metrics]
        name = key if key == "loss" else f"{key}-weighted-mean"
        pooled[name] = weighted_mean_ignoring_nan(values, weights)
    for key in ("tp", "fp", "fn", "tn"):
        pooled[key] = getattr(counts, key)
    pooled[weight_key] = sum(weights)
    for key in ("pos-hist", "neg-hist"):
        stacked = np.sum([number_list(m, key) for m in metrics], axis=0)
        pooled[key] = [int(v) for v in stacked]
    return MetricRecord(pooled)  # type: ignore[arg-type]


class FlameFedAvg(FedAvg):
    """FedAvg that records every node's metrics and carries the threshold."""

    def __init__(self, *, recorder: RunRecorder, **kwargs: Any) -> None:
        super().__init__(evaluate_metrics_aggr_fn=aggregate_evaluation, **kwargs)
        self.recorder = recorder
        self.threshold = DEFAULT_THRESHOLD

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config["threshold"] = self.threshold
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        valid = self._require_replies(server_round, replies, "training")
        for content in valid:
            metrics = metrics_of(content)
            loss = scalar(metrics, "train-loss")
            self.recorder.record(
                "client_train", server_round, region_of(content), {"loss": loss}
            )
        return super().aggregate_train(server_round, replies)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)
        valid = self._require_replies(server_round, replies, "evaluation")
        for content in valid:
            self.recorder.record(
                "client_eval",
                server_round,
                region_of(content),
                node_eval_values(metrics_of(content)),
            )
        pooled = super().aggregate_evaluate(server_round, replies)
        if pooled is not None:
            self.threshold = best_f1_threshold(
                np.asarray(number_list(pooled, "pos-hist")),
                np.asarray(number_list(pooled, "neg-hist")),
            )
            # The histograms served the threshold; they would flood the logs.
            del pooled["pos-hist"], pooled["neg-hist"]
            pooled["threshold"] = self.threshold
            logger.info(
                "round %d: decision threshold %.3f (best F1 on the pooled "
                "validation rows of %d nodes)",
                server_round,
                self.threshold,
                len(valid),
            )
        return pooled

    def _require_replies(
        self, server_round: int, replies: list[Message], phase: str
    ) -> list[RecordDict]:
        """Warn about each lost node; stop the run when none is left."""
        failed = [msg for msg in replies if msg.has_error()]
        for msg in failed:
            logger.warning(
                "round %d: node %d failed in %s and is left out of this round "
                "(%s); results now rest on fewer regions",
                server_round,
                msg.metadata.src_node_id,
                phase,
                msg.error.reason,
            )
        valid = [msg.content for msg in replies if not msg.has_error()]
        if not valid:
            raise FederationError(
                f"round {server_round}: no node replied to {phase} "
                f"({len(failed)} failed, {len(replies)} replies in all). Check that "
                "the SuperNodes are running and can read their partitions (their "
                "logs say why), then start a new run"
            )
        return valid


def node_eval_values(metrics: MetricRecord) -> dict[str, float]:
    """One node's evaluation as metrics.csv values (ratios from its own counts)."""
    values: dict[str, float] = dict(counts_of(metrics).ratios())
    values["loss"] = float(scalar(metrics, "loss"))
    values["roc_auc"] = float(scalar(metrics, "roc-auc"))
    values["pr_auc"] = float(scalar(metrics, "pr-auc"))
    return values
