"""Reading the Parquet partitions that `flame partition` writes.

A node reads only its own region's folder; the server reads only `test/`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from flame.errors import DataError
from flame.schema import COLUMNS, LABEL

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TEST_PARTITION = "test"
PARTITION_HINT = "create it with `flame partition CSV` (see README, 'Real PaySim data')"


def read_manifest(data_dir: Path) -> dict[str, Any]:
    """The manifest of a partitioned data set, with a clear error when absent."""
    path = data_dir / MANIFEST
    if not path.is_file():
        raise DataError(f"no {MANIFEST} in {data_dir}: {PARTITION_HINT}")
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path} is not valid JSON ({exc}); re-run `flame partition --force`"
        ) from exc
    return manifest


def region_for_partition(
    data_dir: Path, partition_id: int, num_partitions: int
) -> tuple[str, Path]:
    """Map a simulated node (partition-id) onto a region, in manifest order."""
    regions: list[str] = list(read_manifest(data_dir)["regions"])
    if num_partitions != len(regions):
        raise DataError(
            f"the simulation has {num_partitions} nodes but {data_dir} holds "
            f"{len(regions)} regions ({', '.join(regions)}); run with "
            f"--federation-config 'num-supernodes={len(regions)}' or re-partition "
            f"with --regions naming {num_partitions} regions"
        )
    region = regions[partition_id]
    return region, data_dir / region


def read_partition(folder: Path, *, max_rows: int = 0, seed: int = 0) -> pd.DataFrame:
    """All rows of one partition folder, or a seeded sample of `max_rows` of them.

    The sample is for small machines: it keeps the fraud rate in expectation
    but changes results, so it is logged as a warning.
    """
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        raise DataError(
            f"no Parquet files in partition folder {folder}: {PARTITION_HINT}"
        )
    frame = pd.concat(
        [pq.read_table(path).to_pandas() for path in files], ignore_index=True
    )
    missing = [name for name in COLUMNS if name not in frame.columns]
    if missing:
        raise DataError(
            f"partition {folder} lacks columns {missing}; it was not written by "
            "`flame partition`: re-partition the CSV"
        )
    if 0 < max_rows < len(frame):
        logger.warning(
            "sampling %d of %d rows of %s (max-rows-per-node): results differ "
            "from a run on all rows",
            max_rows,
            len(frame),
            folder,
        )
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(frame), size=max_rows, replace=False))
        frame = frame.iloc[keep].reset_index(drop=True)
    logger.info(
        "read %d rows (%d frauds) from %s", len(frame), int(frame[LABEL].sum()), folder
    )
    return frame
