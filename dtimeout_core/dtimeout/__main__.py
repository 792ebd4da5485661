"""``python -m dtimeout`` works exactly like the ``dtimeout`` command."""

from __future__ import annotations

import sys

from dtimeout.cli import main

if __name__ == "__main__":
    sys.exit(main())
