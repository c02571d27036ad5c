"""Command line for the ShapesWorld corpus generator.

    python -m mmbm.shapesworld shapes --out data/shapes            # scenes, captions, splits
    python -m mmbm.shapesworld speech --captions data/shapes --out data/speech   # spoken versions

Each subcommand validates its flags into a frozen config before any work starts,
shows a progress bar, resumes an interrupted run and does nothing when the corpus
is already complete. Imports only the corpus modules.
"""

from __future__ import annotations

import argparse
import logging
import sys

from mmbm.errors import MMBMError
from mmbm.shapesworld.corpus import add_shapes_arguments, run_shapes_command
from mmbm.shapesworld.speech import add_speech_arguments, run_speech_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mmbm.shapesworld", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add_shapes_arguments(commands.add_parser("shapes", help="generate the image corpus (scenes and captions)"))
    add_speech_arguments(commands.add_parser("speech", help="generate spoken captions and numbers with offline TTS"))
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        summary = run_shapes_command(args) if args.command == "shapes" else run_speech_command(args)
    except MMBMError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
