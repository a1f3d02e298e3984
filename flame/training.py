"""Local training and evaluation of the MLP on one node's tensors."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from flame.metrics import ConfusionCounts, ranking_scores, score_histograms

logger = logging.getLogger(__name__)

PREDICT_BATCH = 65_536


def split_train_validation(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of a stratified train/validation split, fixed by the seed.

    Stratified so that a node with few frauds still validates on some.
    """
    rng = np.random.default_rng(seed)
    validation: list[np.ndarray] = []
    for label in (0, 1):
        rows = np.flatnonzero(labels == label)
        take = round(fraction * rows.size)
        validation.append(rng.permutation(rows)[:take])
    val_idx = np.sort(np.concatenate(validation))
    train_mask = np.ones(labels.size, dtype=bool)
    train_mask[val_idx] = False
    return np.flatnonzero(train_mask), val_idx


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int
    learning_rate: float
    pos_weight: float
    seed: int


def train_epochs(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    settings: TrainSettings,
    *,
    label: str = "train",
) -> float:
    """Train in place with Adam; returns the mean loss of the last epoch.

    Batches are index slices of whole tensors: a per-row Dataset with default
    collation was 1.6-3x slower per epoch (benchmarks/bench_training.py).
    """
    # Dropout draws from torch's global generator: seed it, so the same seed
    # gives the same weights on every run (Ray workers start unseeded).
    torch.manual_seed(settings.seed)
    criterion = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(settings.pos_weight))
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    generator = torch.Generator().manual_seed(settings.seed)
    model.train()
    epoch_loss = float("nan")
    for epoch in range(1, settings.epochs + 1):
        order = torch.randperm(features.shape[0], generator=generator)
        batches = torch.split(order, settings.batch_size)
        total = 0.0
        for batch in tqdm(
            batches, desc=f"{label} epoch {epoch}/{settings.epochs}", leave=False
        ):
            optimizer.zero_grad()
            loss = criterion(model(features[batch]), labels[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * batch.numel()
        epoch_loss = total / max(features.shape[0], 1)
        logger.info(
            "%s epoch %d/%d: loss %.4f", label, epoch, settings.epochs, epoch_loss
        )
    return epoch_loss


@torch.no_grad()
def predict_scores(model: nn.Module, features: torch.Tensor) -> np.ndarray:
    """Fraud probabilities, in batches so memory stays flat on large partitions."""
    model.eval()
    parts = [
        torch.sigmoid(model(chunk)) for chunk in torch.split(features, PREDICT_BATCH)
    ]
    if not parts:
        return np.zeros(0, dtype=np.float64)
    return torch.cat(parts).double().numpy()


@dataclass(frozen=True)
class Evaluation:
    """What one evaluation reports; counts and histograms add up across nodes."""

    num_examples: int
    loss: float
    counts: ConfusionCounts
    roc_auc: float
    pr_auc: float
    positive_histogram: np.ndarray
    negative_histogram: np.ndarray


def evaluate(
    model: nn.Module, features: torch.Tensor, labels: np.ndarray, threshold: float
) -> Evaluation:
    """Score rows and summarise them at the given threshold.

    The loss is the plain (unweighted) log loss, comparable across data sets
    whatever class weight training used.
    """
    scores = predict_scores(model, features)
    clipped = np.clip(scores, 1e-7, 1 - 1e-7)
    log_loss = -np.mean(labels * np.log(clipped) + (1 - labels) * np.log1p(-clipped))
    roc_auc, pr_auc = ranking_scores(labels, scores)
    positives, negatives = score_histograms(labels, scores)
    return Evaluation(
        num_examples=int(labels.size),
        loss=float(log_loss) if labels.size else float("nan"),
        counts=ConfusionCounts.at_threshold(labels, scores, threshold),
        roc_auc=roc_auc,
        pr_auc=pr_auc,
        positive_histogram=positives,
        negative_histogram=negatives,
    )
