"""``python -m spiel``: see spiel.cli."""

import sys

from .cli import main

sys.exit(main())
