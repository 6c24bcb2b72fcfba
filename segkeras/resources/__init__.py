"""What the labs and the CLI read at run time, shipped inside the package (and so in the wheel):

- ``pretrained/``: the counting-pretrained shapesnet checkpoints and their reports
  (:mod:`segkeras.pretrain`; made by ``data/make_pretrained_encoder.py``);
- ``sample/``: 32 shapes images as a COCO-format folder (the data source ``"sample"``;
  ``shapes.export(32, ..., image_size=128, seed=0)``).

:func:`path` finds them with :mod:`importlib.resources`, wherever segkeras is installed.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from segkeras.errors import SegkerasError


def path(*parts: str) -> Path:
    """The filesystem path of the shipped resource ``resources/<parts...>`` (it may not exist:
    check with ``.is_file()``)."""
    found = importlib.resources.files(__name__).joinpath(*parts)
    if not isinstance(found, Path):
        raise SegkerasError(f"segkeras is installed as an archive ({found}); install it from a "
                            f"wheel or a folder (pip install segkeras) to read its resources.")
    return found
