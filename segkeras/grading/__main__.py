"""``python -m segkeras.grading grade ...``: the same as ``python -m segkeras grade ...``."""

import sys

from segkeras.grading.cli import main

sys.exit(main())
