"""The fraud classifier: a small MLP that outputs one logit per transaction."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class FraudMLP(nn.Module):
    """Feed-forward net: Linear -> ReLU -> Dropout per hidden layer, then a logit."""

    def __init__(
        self, num_features: int, hidden_sizes: Sequence[int], dropout: float
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = num_features
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)


def build_model(
    num_features: int, hidden_sizes: Sequence[int], dropout: float, seed: int
) -> FraudMLP:
    """A freshly initialised model; the seed makes round-0 weights reproducible."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = FraudMLP(num_features, hidden_sizes, dropout)
    torch.random.set_rng_state(generator_state)
    return model
