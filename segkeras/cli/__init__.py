"""Command line: ``python -m segkeras {demo,train,evaluate,predict,data,backbones,grade}``.

One module per task, each with ``add_parser(commands)`` registering its commands (their flags and
the checks made before any work) and ``set_defaults(run=...)`` pointing at the function that does
the work: :mod:`~segkeras.cli.demo`; :mod:`~segkeras.cli.model_commands` (``train``,
``evaluate``, ``predict``), which hands each model to :mod:`~segkeras.cli.semantic` or
:mod:`~segkeras.cli.instances` (Mask R-CNN) by its task; :mod:`~segkeras.cli.data` (``data``,
``backbones``); :mod:`segkeras.grading.cli` (``grade``); shared checks and loading in
:mod:`~segkeras.cli.common`.

Every user error (missing file, bad size, unknown name...) prints one line on stderr and exits 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from segkeras import runs
from segkeras.cli import common, data, demo, model_commands
from segkeras.errors import SegkerasError
from segkeras.grading import cli as grading_cli

EXIT_USAGE = 2

COMMAND_MODULES = (demo, model_commands, data, grading_cli)
"""The modules whose ``add_parser(commands)`` :func:`build_parser` calls, in ``--help`` order.
A command's ``run(args)`` returns None or an exit status."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2), like every other CLI error."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from segkeras import __version__

    parser = _Parser(
        prog="python -m segkeras",
        description="Segmentation with Keras 3: FCN, U-Net, hourglass, DeconvNet, Mask R-CNN.",
    )
    parser.add_argument("--version", action="version", version=f"segkeras {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse: usage errors exit 2, --help and --version exit 0
        return int(exit_.code or 0)
    try:
        with runs.interruptible():
            status = args.run(args)
    except (SegkerasError, FileNotFoundError, NotADirectoryError, PermissionError) as error:
        message = " ".join(common.in_flag_terms(str(error)).split())  # one line
        print(f"segkeras {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except runs.Interrupted as interrupted:  # Ctrl-C: 130, SIGTERM: 143, one line
        print(f"segkeras {args.command}: {interrupted.message}", file=sys.stderr)
        return interrupted.exit_code
    return int(status or 0)
