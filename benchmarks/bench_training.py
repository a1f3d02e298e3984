"""One training epoch: Flame's index-slice batches against a per-row DataLoader.

On the same standardized features (from `flame.features.compute_features` of a
`flame.synth` frame) and the same freshly seeded MLP (`flame.model.build_model`),
it times one epoch of `flame.training.train_epochs`, which slices whole tensors
by a shuffled index, against the textbook loop over a `torch.utils.data.
DataLoader` of a per-row `Dataset.__getitem__` with default collation. Same
batch size, loss, optimizer and thread count; the two alternate, which goes
first switching every repetition, and the ratio of their medians is printed,
because absolute figures on a shared 2-core machine are noisy. Between them,
`compute_features` of the same rows is timed: seconds per million rows, and as
a share of a Flame epoch.

    python benchmarks/bench_training.py                   # 500,000 rows
    python benchmarks/bench_training.py --rows 100000     # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from flame.features import (
    NUM_FEATURES,
    FeatureMoments,
    FeatureStats,
    compute_features,
    labels_of,
)
from flame.model import build_model
from flame.paysim_csv import read_table
from flame.synth import generate
from flame.training import TrainSettings, train_epochs

HIDDEN_SIZES = (64, 32)  # the run config's defaults
DROPOUT = 0.1
LEARNING_RATE = 0.001
SEED = 42

Epoch = Callable[[nn.Module, torch.Tensor, torch.Tensor, TrainSettings], float]


class RowDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """The usual PyTorch way: one (features, label) pair per `__getitem__`."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[index], self.labels[index]


def flame_epoch(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: TrainSettings
) -> float:
    """One epoch of Flame's own loop, progress bar (sent to /dev/null) included."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        return train_epochs(model, x, y, settings)


def loader_epoch(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: TrainSettings
) -> float:
    """The same epoch as `train_epochs`, its batches from a DataLoader."""
    criterion = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(settings.pos_weight))
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    generator = torch.Generator().manual_seed(settings.seed)
    loader = DataLoader(
        RowDataset(x, y),
        batch_size=settings.batch_size,
        shuffle=True,
        generator=generator,
    )
    model.train()
    total = 0.0
    for features, labels in loader:
        optimizer.zero_grad()
        loss = criterion(model(features), labels)
        loss.backward()
        optimizer.step()
        total += loss.item() * labels.numel()
    return total / max(len(x), 1)


def synth_frame(rows: int) -> pd.DataFrame:
    """`rows` built-in rows, typed as a partition's Parquet gives them."""
    with tempfile.TemporaryDirectory(prefix="flame-bench-") as tmp:
        path = Path(tmp) / "synth.csv"
        generate(path, rows=rows, progress=False)
        return read_table(path).to_pandas()


def features_step(frame: pd.DataFrame) -> Callable[[], object]:
    """`compute_features` of the whole frame, as a timed step."""
    return lambda: compute_features(frame)


def time_epochs(
    epochs: dict[str, Epoch],
    x: torch.Tensor,
    y: torch.Tensor,
    settings: TrainSettings,
    *,
    repeats: int,
    extra: dict[str, Callable[[], object]],
) -> dict[str, list[float]]:
    """Seconds of each kind of epoch, alternating which goes first.

    The `extra` steps run once per repetition between the epochs, so their
    times can be compared with an epoch's under the same load.
    """
    # Warm up each loop untimed on a few batches (first-call costs of torch).
    warm = slice(0, 20 * settings.batch_size)
    for epoch in epochs.values():
        model = build_model(NUM_FEATURES, HIDDEN_SIZES, DROPOUT, SEED)
        epoch(model, x[warm], y[warm], settings)

    seconds: dict[str, list[float]] = {name: [] for name in [*epochs, *extra]}
    names = list(epochs)
    for rep in range(repeats):
        first, second = names if rep % 2 == 0 else names[::-1]
        for name in (first, *extra, second):
            model = build_model(NUM_FEATURES, HIDDEN_SIZES, DROPOUT, SEED)
            started = time.perf_counter()
            if name in extra:
                extra[name]()
                note = ""
            else:
                note = f"loss {epochs[name](model, x, y, settings):.4f}"
            seconds[name].append(time.perf_counter() - started)
            print(
                f"  rep {rep + 1}/{repeats} {name:<10} {seconds[name][-1]:6.2f} s "
                f"{note:<11} load {os.getloadavg()[0]:.2f}"
            )
    return seconds


def report(seconds: dict[str, list[float]], rows: int) -> None:
    """Medians, and the ratios measured side by side that carry the claims."""
    median = {name: statistics.median(values) for name, values in seconds.items()}
    print(f"\n{'step':<11} {'median s':>9} {'rows/s':>10} {'s/M rows':>9}")
    for name, value in median.items():
        print(
            f"{name:<11} {value:>9.2f} {rows / value:>10,.0f} "
            f"{value / rows * 1e6:>9.2f}"
        )
    flame, loader = seconds["flame"], seconds["dataloader"]
    ratios = [b / a for a, b in zip(flame, loader, strict=True)]
    print(f"\nratios (medians of {len(flame)} interleaved repetitions):")
    speedup = median["dataloader"] / median["flame"]
    best = min(loader) / min(flame)
    print(
        f"  epoch time, dataloader / flame: {speedup:.1f} "
        f"(per repetition {min(ratios):.1f}-{max(ratios):.1f}; best / best {best:.1f})"
    )
    print(
        "  compute_features / flame epoch, same rows: "
        f"{median['features'] / median['flame']:.2f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5, help="epochs of each kind")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (run config default 1)"
    )
    args = parser.parse_args()
    logging.getLogger("flame").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} with {args.threads} thread(s), load {load}"
    )

    # Features as a node computes them, standardized by their own moments.
    frame = synth_frame(args.rows)
    raw = compute_features(frame)
    labels = labels_of(frame)
    stats = FeatureStats.from_moments(FeatureMoments.of(raw, labels))
    x = torch.from_numpy(stats.standardize(raw))
    y = torch.from_numpy(labels)

    # One epoch each way, same model init, batch size and optimizer.
    settings = TrainSettings(
        epochs=1,
        batch_size=args.batch_size,
        learning_rate=LEARNING_RATE,
        pos_weight=stats.pos_weight,
        seed=SEED,
    )
    epochs: dict[str, Epoch] = {"flame": flame_epoch, "dataloader": loader_epoch}
    extra = {"features": features_step(frame)}
    seconds = time_epochs(epochs, x, y, settings, repeats=args.repeats, extra=extra)
    report(seconds, len(x))
    print(f"load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
