"""Split a PaySim CSV into per-region Parquet partitions; see --help."""

import sys
from pathlib import Path

# Let `python scripts/partition.py` run from a checkout without installing.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flame.partition import main

if __name__ == "__main__":
    sys.exit(main())
