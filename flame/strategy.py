"""FedAvg with Flame's bookkeeping: per-node metrics, count-based aggregation,
a federated decision threshold, and loud failure when nodes are lost.

Weights are averaged by `num-examples` (training examples, McMahan et al. 2017,
"Communication-Efficient Learning of Deep Networks from Decentralized Data").
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import constant as flwr_constant
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from flame.errors import FederationError
from flame.metrics import DEFAULT_THRESHOLD, ConfusionCounts, best_f1_threshold
from flame.records import number_list, scalar
from flame.tracking import RunRecorder

logger = logging.getLogger(__name__)

NODE_RECORD = "node"
METRICS_RECORD = "metrics"
# Replies the SuperLink writes itself (node offline, message expired) come
# from its own node id (1 in Flower 1.42); the node they stand for is the
# destination of the instruction they answer.
SUPERLINK_NODE_ID = int(flwr_constant.SUPERLINK_NODE_ID)
# How long a round waits for min-nodes SuperNodes before failing the run;
# FedAvg's own sampling would wait forever for a node that never comes back.
NODE_WAIT_SECONDS = 300.0


def destinations(sent: Iterable[Message]) -> dict[str, int]:
    """Message id -> destination node of instructions the Grid has pushed."""
    return {
        msg.metadata.message_id: msg.metadata.dst_node_id
        for msg in sent
        if msg.metadata.message_id
    }


def origin_node(reply: Message, sent_to: Mapping[str, int]) -> int:
    """The node a reply stands for, also when the SuperLink wrote it."""
    source = reply.metadata.src_node_id
    if source != SUPERLINK_NODE_ID:
        return int(source)
    return int(sent_to.get(reply.metadata.reply_to_message_id, SUPERLINK_NODE_ID))


def describe_node(node_id: int, regions: Mapping[int, str]) -> str:
    return f"node {node_id} (region {regions.get(node_id, 'unknown')})"


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
    if not total:
        return float("nan")
    # Clamp the float rounding that lifts a mean of 1.0s to 1.0000000000000002.
    return min(max(sum(v * w for v, w in pairs) / total, min(values)), max(values))


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

    def __init__(
        self,
        *,
        recorder: RunRecorder,
        node_regions: Mapping[int, str] | None = None,
        node_wait_seconds: float = NODE_WAIT_SECONDS,
        **kwargs: Any,
    ) -> None:
        super().__init__(evaluate_metrics_aggr_fn=aggregate_evaluation, **kwargs)
        self.recorder = recorder
        self.threshold = DEFAULT_THRESHOLD
        # Regions by node id, from the feature-statistics round: warnings about
        # a lost node name its region, not just a 64-bit id.
        self.node_regions = dict(node_regions or {})
        self.node_wait_seconds = node_wait_seconds
        self._sent: list[Message] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._await_nodes(server_round, grid, "training")
        self._sent = list(super().configure_train(server_round, arrays, config, grid))
        return self._sent

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._await_nodes(server_round, grid, "evaluation")
        config["threshold"] = self.threshold
        sent = super().configure_evaluate(server_round, arrays, config, grid)
        self._sent = list(sent)
        return self._sent

    def _await_nodes(self, server_round: int, grid: Grid, phase: str) -> None:
        """Wait a bounded time for min-nodes online SuperNodes, naming the lost."""
        deadline = time.monotonic() + self.node_wait_seconds
        warned = False
        while len(online := set(grid.get_node_ids())) < self.min_available_nodes:
            lost = ", ".join(
                describe_node(node, self.node_regions)
                for node in sorted(set(self.node_regions) - online)
            )
            if time.monotonic() > deadline:
                raise FederationError(
                    f"round {server_round}: {len(online)} SuperNodes online, fewer "
                    f"than min-nodes={self.min_available_nodes}, after waiting "
                    f"{self.node_wait_seconds:.0f} s for {phase}; lost: "
                    f"{lost or 'none known'}. Restart the lost SuperNodes (they "
                    "reconnect with their key) or lower min-nodes, then start a "
                    "new run"
                )
            if not warned:
                logger.warning(
                    "round %d: waiting up to %.0f s for min-nodes=%d SuperNodes; "
                    "lost: %s",
                    server_round,
                    self.node_wait_seconds,
                    self.min_available_nodes,
                    lost or "none known",
                )
                warned = True
            time.sleep(1.0)

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
        """Warn about each lost node; stop the run when fewer than min-nodes remain."""
        sent_to = destinations(self._sent)
        failed = [msg for msg in replies if msg.has_error()]
        answered = {origin_node(msg, sent_to) for msg in replies}
        for msg in failed:
            logger.warning(
                "round %d: %s failed in %s and is left out of this round "
                "(error code %d: %s); results now rest on fewer regions",
                server_round,
                describe_node(origin_node(msg, sent_to), self.node_regions),
                phase,
                msg.error.code,
                msg.error.reason,
            )
        silent = sorted(set(sent_to.values()) - answered)
        for node in silent:
            logger.warning(
                "round %d: %s sent no %s reply before the timeout and is left out",
                server_round,
                describe_node(node, self.node_regions),
                phase,
            )
        valid = [msg.content for msg in replies if not msg.has_error()]
        if not valid:
            raise FederationError(
                f"round {server_round}: no node replied to {phase} "
                f"({len(failed)} failed, {len(replies)} replies in all). Check that "
                "the SuperNodes are running and can read their partitions (their "
                "logs say why), then start a new run"
            )
        needed = (
            self.min_train_nodes if phase == "training" else (self.min_evaluate_nodes)
        )
        if len(valid) < needed:
            lost = [origin_node(msg, sent_to) for msg in failed] + silent
            raise FederationError(
                f"round {server_round}: {len(valid)} nodes replied to {phase}, "
                f"fewer than min-nodes={needed}; lost: "
                + ", ".join(describe_node(n, self.node_regions) for n in lost)
                + ". Restart the lost SuperNodes and start a new run, or set "
                "min-nodes lower to let a round go on without them"
            )
        return valid


def node_eval_values(metrics: MetricRecord) -> dict[str, float]:
    """One node's evaluation as metrics.csv values (ratios from its own counts)."""
    values: dict[str, float] = dict(counts_of(metrics).ratios())
    values["loss"] = float(scalar(metrics, "loss"))
    values["roc_auc"] = float(scalar(metrics, "roc-auc"))
    values["pr_auc"] = float(scalar(metrics, "pr-auc"))
    return values
