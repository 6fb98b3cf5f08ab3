"""Entry point; each subcommand registers itself from its own module."""

from __future__ import annotations

import argparse
import errno
import sys

#: OSError codes that say something about the user's files or machine (a full disk, a
#: read-only folder, a file where a folder was named), not about scalepool: reported
#: like a ValueError, without a traceback.
_USER_ERRNOS = {
    getattr(errno, name)
    for name in (
        "ENOSPC",
        "EDQUOT",
        "EACCES",
        "EPERM",
        "EROFS",
        "EISDIR",
        "ENOTDIR",
        "EEXIST",
        "ENAMETOOLONG",
    )
    if hasattr(errno, name)
}


def build_parser() -> argparse.ArgumentParser:
    from . import _data, _export, _mix, _scales, _studies, _train
    from ._config import ConfigArgumentParser

    parser = argparse.ArgumentParser(
        prog="scalepool",
        description="Loss-guided multi-scale force prediction: data, branches, scale layer, studies.",
    )
    # subcommand parsers read --config FILE.yaml where they declare it (train, search, reproduce)
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=ConfigArgumentParser
    )
    _data.register(commands)
    _train.register(commands)
    _mix.register(commands)
    _export.register(commands)
    _scales.register(commands)
    _studies.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ._config import save_cli_options

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        if code in (0, 130):  # finished or interrupted (resumable): record its options
            save_cli_options(args)
        return code
    except (ValueError, FileNotFoundError) as err:
        print(f"scalepool {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in _USER_ERRNOS:
            raise
        where = f": {err.filename}" if err.filename else ""
        print(f"scalepool {args.command}: error: {err.strerror or err}{where}", file=sys.stderr)
        return 2
