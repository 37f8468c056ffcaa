"""Shared entry point of the ``bench/`` stage scripts: parse ``--params``/``--set``, set up
logging, call one library function, exit non-zero with a one-line message on bad input."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from sidrec_core.config import ConfigError, load_from_args, stage_parser
from sidrec_core.io import os_error_line


def main(
    stage_fn: Callable[[dict[str, Any]], dict[str, Any]],
    description: str,
    argv: list[str] | None = None,
) -> int:
    args = stage_parser(description).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        params = load_from_args(args)
        result = stage_fn(params)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        if os.environ.get("SIDREC_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an output folder that is read-only or full
        if os.environ.get("SIDREC_DEBUG"):
            raise
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    summary = {k: v for k, v in result.items() if isinstance(v, (int, float, str, bool))}
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0
