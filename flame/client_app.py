"""The ClientApp: runs inside a region, next to that region's partition.

Raw rows never leave it: it replies with feature moments (query), model weights
(train) and confusion counts, AUCs and score histograms (evaluate).
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from flame import features as feats
from flame.config import RunConfig, resolve_dir
from flame.data import read_partition, region_for_partition
from flame.errors import ConfigError
from flame.metrics import DEFAULT_THRESHOLD
from flame.model import FraudMLP, build_model
from flame.records import scalar
from flame.strategy import METRICS_RECORD, NODE_RECORD
from flame.training import TrainSettings, evaluate, split_train_validation, train_epochs

logger = logging.getLogger(__name__)

app = ClientApp()


@dataclass(frozen=True)
class NodeData:
    """One node's rows as unscaled features, split into train and validation."""

    region: str
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray


@lru_cache(maxsize=2)
def load_node_data(
    folder: Path, region: str, max_rows: int, seed: int, validation_fraction: float
) -> NodeData:
    """Read and featurise a partition once per process (rounds reuse it)."""
    frame = read_partition(folder, max_rows=max_rows, seed=seed)
    features = feats.compute_features(frame)
    labels = feats.labels_of(frame)
    train_idx, val_idx = split_train_validation(labels, validation_fraction, seed)
    logger.info(
        "%s: %d training and %d validation rows", region, train_idx.size, val_idx.size
    )
    return NodeData(
        region,
        features[train_idx],
        labels[train_idx],
        features[val_idx],
        labels[val_idx],
    )


def locate_partition(context: Context, config: RunConfig) -> tuple[str, Path]:
    """Find this node's region and folder from its node config.

    Deployed SuperNodes set `data-path` (and `region`); simulated ones get
    `partition-id`/`num-partitions`, mapped onto regions in manifest order.
    """
    node = context.node_config
    if "data-path" in node:
        folder = Path(str(node["data-path"]))
        if not folder.is_dir():
            raise ConfigError(
                f"node config data-path {folder} is not a folder on this node; "
                "point --node-config 'data-path=\"...\"' at the region's partition"
            )
        return str(node.get("region", folder.name)), folder
    if "partition-id" in node and "num-partitions" in node:
        data_dir = resolve_dir(config.data_dir, what="data")
        return region_for_partition(
            data_dir, int(node["partition-id"]), int(node["num-partitions"])
        )
    raise ConfigError(
        "this SuperNode has neither node config 'data-path' nor 'partition-id': "
        'start it with --node-config \'region="US" data-path="/data/US"\''
    )


def node_setup(context: Context) -> tuple[RunConfig, NodeData]:
    config = RunConfig.from_mapping(context.run_config)
    torch.set_num_threads(config.threads)
    region, folder = locate_partition(context, config)
    data = load_node_data(
        folder,
        region,
        config.max_rows_per_node,
        config.seed,
        config.validation_fraction,
    )
    return config, data


def model_from(message: Message, config: RunConfig) -> FraudMLP:
    model = build_model(
        feats.NUM_FEATURES, config.hidden_sizes, config.dropout, config.seed
    )
    model.load_state_dict(message.content.array_records["arrays"].to_torch_state_dict())
    return model


def reply(
    message: Message,
    region: str,
    metrics: MetricRecord,
    arrays: ArrayRecord | None = None,
) -> Message:
    content = RecordDict(
        {METRICS_RECORD: metrics, NODE_RECORD: ConfigRecord({"region": region})}
    )
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content=content, reply_to=message)


@app.query()
def share_moments(message: Message, context: Context) -> Message:
    """Feature statistics round: sufficient statistics of the training rows."""
    _, data = node_setup(context)
    moments = feats.FeatureMoments.of(data.train_x, data.train_y)
    metrics = MetricRecord(
        {
            "count": moments.count,
            "positives": moments.positives,
            "sums": [float(v) for v in moments.sums],
            "sums-sq": [float(v) for v in moments.sums_sq],
            "num-examples": moments.count,
        }
    )
    return reply(message, data.region, metrics)


@app.train()
def train(message: Message, context: Context) -> Message:
    """Local epochs on the agreed scaling and class weight; reply with weights."""
    config, data = node_setup(context)
    server_config = message.content.config_records["config"]
    stats = feats.FeatureStats.from_config(server_config)
    model = model_from(message, config)

    server_round = int(scalar(server_config, "server-round"))
    settings = TrainSettings(
        epochs=config.local_epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        pos_weight=stats.pos_weight,
        # Distinct shuffles per round and per region, reproducible by seed.
        seed=config.seed + 1000 * server_round + zlib.crc32(data.region.encode()),
    )
    loss = train_epochs(
        model,
        torch.from_numpy(stats.standardize(data.train_x)),
        torch.from_numpy(data.train_y),
        settings,
        label=f"{data.region} round {server_round}",
    )

    metrics = MetricRecord({"train-loss": loss, "num-examples": int(data.train_y.size)})
    return reply(message, data.region, metrics, ArrayRecord(model.state_dict()))


@app.evaluate()
def evaluate_global(message: Message, context: Context) -> Message:
    """Score the global model on this node's validation rows."""
    config, data = node_setup(context)
    server_config = message.content.config_records["config"]
    stats = feats.FeatureStats.from_config(server_config)
    model = model_from(message, config)
    threshold = (
        scalar(server_config, "threshold")
        if "threshold" in server_config
        else DEFAULT_THRESHOLD
    )

    result = evaluate(
        model, torch.from_numpy(stats.standardize(data.val_x)), data.val_y, threshold
    )

    metrics = MetricRecord(
        {
            "loss": result.loss,
            "tp": result.counts.tp,
            "fp": result.counts.fp,
            "fn": result.counts.fn,
            "tn": result.counts.tn,
            "roc-auc": result.roc_auc,
            "pr-auc": result.pr_auc,
            "pos-hist": [int(v) for v in result.positive_histogram],
            "neg-hist": [int(v) for v in result.negative_histogram],
            "num-examples": result.num_examples,
        }
    )
    return reply(message, data.region, metrics)
