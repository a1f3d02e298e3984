"""Create the CA, SuperLink certificate and SuperNode keys in certs/; see --help."""

import sys
from pathlib import Path

# Let `python scripts/generate_certs.py` run from a checkout without installing.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flame.certs import main

if __name__ == "__main__":
    sys.exit(main())
