"""``python -m segkeras``: see :mod:`segkeras.cli`."""

import sys

from segkeras.cli import main

sys.exit(main())
