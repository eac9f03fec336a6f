"""The omi-audio command: one subcommand per tool, each in its own module."""

from __future__ import annotations

import argparse
import sys

from omi_audio import compact, export, importer, status

COMMANDS = {"export": export, "status": status, "import": importer, "compact": compact}


def main(argv: list[str] | None = None) -> int:
    """Run ``omi-audio COMMAND [OPTIONS]``; returns the exit status (argparse exits 2 on bad arguments)."""
    parser = argparse.ArgumentParser(prog="omi-audio", description="Read back the audio and conversations Omi stored.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        command = commands.add_parser(name, help=module.SUMMARY, description=module.DESCRIPTION)
        module.add_arguments(command)
        command.set_defaults(run=module.run, parser=command)
    args = parser.parse_args(argv)
    return args.run(args, args.parser)


if __name__ == "__main__":
    sys.exit(main())
