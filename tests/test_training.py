"""Local training: reproducible by seed, and the split is stratified."""

from __future__ import annotations

import numpy as np
import torch

from flame.model import build_model
from flame.training import TrainSettings, split_train_validation, train_epochs


def train_once(global_seed: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(0)
    features = torch.from_numpy(rng.normal(size=(512, 6)).astype(np.float32))
    labels = torch.from_numpy((rng.random(512) < 0.1).astype(np.float32))
    model = build_model(6, (8, 4), dropout=0.5, seed=1)
    # Whatever state the worker's global generator is in, results must match.
    torch.manual_seed(global_seed)
    settings = TrainSettings(
        epochs=2, batch_size=64, learning_rate=0.01, pos_weight=9.0, seed=5
    )
    train_epochs(model, features, labels, settings)
    return [p.detach().clone() for p in model.parameters()]


def test_same_seed_gives_identical_weights_whatever_the_global_rng() -> None:
    first, second = train_once(global_seed=0), train_once(global_seed=999)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_validation_split_is_stratified_and_disjoint() -> None:
    labels = np.array([1] * 10 + [0] * 90)

    train, validation = split_train_validation(labels, 0.2, seed=3)

    assert labels[validation].sum() == 2 and validation.size == 20
    assert np.intersect1d(train, validation).size == 0
    assert train.size + validation.size == labels.size
