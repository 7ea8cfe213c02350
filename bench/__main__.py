"""``python -m bench [B1 ...]``."""

import sys

from bench.cli import main

sys.exit(main())
