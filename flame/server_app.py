"""The ServerApp: agrees feature statistics, runs FedAvg rounds, evaluates the
global model on the held-out test set after every round and records it all.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp

from flame import features as feats
from flame.config import RunConfig, resolve_dir
from flame.data import TEST_PARTITION, read_manifest, read_partition
from flame.errors import FederationError
from flame.model import build_model
from flame.records import number_list, scalar
from flame.strategy import (
    NODE_WAIT_SECONDS,
    FlameFedAvg,
    describe_node,
    destinations,
    metrics_of,
    origin_node,
    region_of,
)
from flame.tracking import SERVER_REGION, RunRecorder
from flame.training import evaluate

logger = logging.getLogger(__name__)

app = ServerApp()

# How long the server waits for replies (node waits: strategy.NODE_WAIT_SECONDS).
REPLY_TIMEOUT_SECONDS = 1800.0


def wait_for_nodes(grid: Grid, min_nodes: int, timeout: float) -> list[int]:
    """Node ids once `min_nodes` are connected; a clear error instead of a hang."""
    deadline = time.monotonic() + timeout
    while True:
        node_ids = sorted(grid.get_node_ids())
        if len(node_ids) >= min_nodes:
            return node_ids
        if time.monotonic() > deadline:
            raise FederationError(
                f"only {len(node_ids)} of min-nodes={min_nodes} SuperNodes connected "
                f"within {timeout:.0f} s; start the missing SuperNodes or lower "
                "min-nodes in the run config"
            )
        time.sleep(1.0)


def agree_on_feature_stats(
    grid: Grid, node_ids: list[int]
) -> tuple[feats.FeatureStats, dict[int, str]]:
    """Round zero: sum every node's feature moments into shared scaling stats.

    Also returns each replying node's region, so later warnings can name it.
    """
    messages = [
        Message(
            content=RecordDict({"config": ConfigRecord({"phase": "moments"})}),
            message_type=MessageType.QUERY,
            dst_node_id=node_id,
        )
        for node_id in node_ids
    ]
    replies = list(grid.send_and_receive(messages, timeout=REPLY_TIMEOUT_SECONDS))
    sent_to = destinations(messages)  # the Grid set their ids when pushing
    parts: list[feats.FeatureMoments] = []
    regions: dict[int, str] = {}
    for msg in replies:
        if msg.has_error():
            logger.warning(
                "%s sent no feature statistics (%s); it is left out of the scaling",
                describe_node(origin_node(msg, sent_to), regions),
                msg.error.reason,
            )
            continue
        regions[msg.metadata.src_node_id] = region_of(msg.content)
        metrics = metrics_of(msg.content)
        parts.append(
            feats.FeatureMoments(
                count=int(scalar(metrics, "count")),
                positives=int(scalar(metrics, "positives")),
                sums=np.asarray(number_list(metrics, "sums")),
                sums_sq=np.asarray(number_list(metrics, "sums-sq")),
            )
        )
        logger.info(
            "feature statistics from %s: %d training rows, %d frauds",
            region_of(msg.content),
            parts[-1].count,
            parts[-1].positives,
        )
    if not parts:
        raise FederationError(
            "no node replied to the feature-statistics round; check the SuperNode "
            "logs (is each node's data-path readable?)"
        )
    stats = feats.FeatureStats.from_moments(feats.FeatureMoments.combine(parts))
    logger.info(
        "agreed scaling over %d nodes; positive-class weight %.1f",
        len(parts),
        stats.pos_weight,
    )
    return stats, regions


@dataclass
class TestSetEvaluator:
    """Central evaluation of the global model on the held-out test partition."""

    features: torch.Tensor
    labels: np.ndarray
    config: RunConfig
    strategy: FlameFedAvg
    recorder: RunRecorder

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = build_model(
            feats.NUM_FEATURES,
            self.config.hidden_sizes,
            self.config.dropout,
            self.config.seed,
        )
        model.load_state_dict(arrays.to_torch_state_dict())
        result = evaluate(model, self.features, self.labels, self.strategy.threshold)
        values: dict[str, float] = {
            **result.counts.ratios(),
            "loss": result.loss,
            "roc_auc": result.roc_auc,
            "pr_auc": result.pr_auc,
        }
        # The threshold goes to TensorBoard and MLflow beside the metrics it made.
        values["threshold"] = self.strategy.threshold
        self.recorder.record("server_eval", server_round, SERVER_REGION, values)
        return MetricRecord(dict(values.items()))


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Statistics round, FedAvg rounds with central evaluation, outputs."""
    config = RunConfig.from_mapping(context.run_config)
    torch.set_num_threads(config.threads)
    data_dir = resolve_dir(config.data_dir, what="data")
    manifest = read_manifest(data_dir)
    test = read_partition(data_dir / TEST_PARTITION)
    run_base = Path(config.run_dir).expanduser().absolute()
    recorder = RunRecorder.create(
        run_base,
        config.run_name,
        config.as_dict(),
        manifest,
        # An empty run-config value falls back to the ServerApp host's own
        # MLFLOW_TRACKING_URI (the Compose serverapp sets it).
        mlflow_uri=config.mlflow_tracking_uri
        or os.environ.get("MLFLOW_TRACKING_URI", ""),
        mlflow_experiment=config.mlflow_experiment,
    )
    succeeded = False
    try:
        run_federation(grid, config, test, recorder)
        succeeded = True
    finally:
        recorder.close(succeeded=succeeded)


def run_federation(
    grid: Grid, config: RunConfig, test: pd.DataFrame, recorder: RunRecorder
) -> None:
    # Agree on scaling without moving rows.
    node_ids = wait_for_nodes(grid, config.min_nodes, NODE_WAIT_SECONDS)
    stats, regions = agree_on_feature_stats(grid, node_ids)

    # FedAvg rounds; the test set is scaled with the agreed statistics only.
    strategy = FlameFedAvg(
        recorder=recorder,
        node_regions=regions,
        fraction_train=config.fraction_train,
        fraction_evaluate=config.fraction_evaluate,
        min_train_nodes=config.min_nodes,
        min_evaluate_nodes=config.min_nodes,
        min_available_nodes=config.min_nodes,
    )
    evaluator = TestSetEvaluator(
        features=torch.from_numpy(stats.standardize(feats.compute_features(test))),
        labels=feats.labels_of(test),
        config=config,
        strategy=strategy,
        recorder=recorder,
    )
    model = build_model(
        feats.NUM_FEATURES, config.hidden_sizes, config.dropout, config.seed
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=config.num_server_rounds,
        timeout=REPLY_TIMEOUT_SECONDS,
        train_config=ConfigRecord(dict(stats.to_config())),
        evaluate_config=ConfigRecord(dict(stats.to_config())),
        evaluate_fn=evaluator,
    )

    # Outputs: the model travels with its scaling and threshold.
    if not result.arrays:
        raise FederationError("the run produced no global model: every node failed")
    path = recorder.save_model(
        {
            "state_dict": result.arrays.to_torch_state_dict(),
            "feature_names": list(feats.FEATURE_NAMES),
            "feature_mean": stats.mean.tolist(),
            "feature_std": stats.std.tolist(),
            "pos_weight": stats.pos_weight,
            "threshold": strategy.threshold,
            "hidden_sizes": list(config.hidden_sizes),
            "dropout": config.dropout,
        }
    )
    logger.info("server-side test metrics per round:\n%s", recorder.summary_table())
    logger.info("model saved to %s", path)
