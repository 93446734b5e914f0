"""Command line: `python -m actors demo`."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actors", description="Supervised actor tree for agent fleets.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="a supervised tree whose child crashes and is restarted")
    demo.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from loguru import logger

        from actors._demo import run_demo

        logger.remove()  # the CLI owns the process's log output; the library never does this
        logger.add(sys.stderr, level="WARNING", format="{time:HH:mm:ss.SSS} {level:<7} {message}", backtrace=False, diagnose=False)

        return run_demo(args.rounds)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
