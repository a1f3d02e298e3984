"""Shared test fixtures: where the real PaySim rows live, and skipping without them."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PAYSIM_DIR = REPO_ROOT.parent / "shared" / "data" / "paysim"
SAMPLE_12K = PAYSIM_DIR / "paysim_sample_12k.csv"


def require_paysim(path: Path = SAMPLE_12K) -> Path:
    """The real PaySim file, or a skip that says where it was looked for."""
    if not path.is_file():
        pytest.skip(
            f"real PaySim rows not found at {path} (../shared/data/paysim "
            "beside the repository); these tests need them"
        )
    return path
