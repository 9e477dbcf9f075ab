"""The one ``edgeloop`` command.

Each part registers its own subcommands; this module only dispatches, and imports a part
only when its command is used, so ``edgeloop agent ...`` never imports torch (the agent
installs without it) and ``edgeloop --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# command -> (module with `add_arguments(parser)` and `run(args) -> int`, help line)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("trainer.cli_data", "generate synthetic data sets"),
    "model": ("trainer.cli_model", "train, evaluate, prune, distill, quantize, export a model from a spec"),
    "agent": ("agent.cli", "the edge agent: probe, bench, serve, run"),
    "controller": ("controller.cli", "the fleet controller: serve"),
    "fleet": ("controller.fleet_cli", "a terminal client of the controller's REST API"),
    "demo": ("controller.demo.cli", "the whole loop on this machine, with an HTML report"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeloop", description="Vision models for a fleet of edge devices."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_line) in COMMANDS.items():
        p = sub.add_parser(name, help=help_line, description=help_line)
        if name == only:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    only = command if command in COMMANDS else None
    args = build_parser(only).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
