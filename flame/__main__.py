"""`python -m flame` is the `flame` command."""

import sys

from flame.cli import main

sys.exit(main())
