"""What every stage entry point shares: arguments, config loading, logging, and a clear one-line failure."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline import config
from pipeline.config import Config
from pipeline.paths import Paths

log = logging.getLogger("facerepro")


def _terminated(signum: int, frame: object) -> None:
    # SIGTERM (a scheduler, `kill`, Prefect cancelling) unwinds like Ctrl-C: tracking ends the run as KILLED and
    # staging folders are left for the next write to sweep; the last checkpoint is where a rerun resumes
    raise SystemExit(128 + signum)


def main(
    name: str,
    run: Callable[..., object],
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}", description=run.__doc__)
    parser.add_argument("--params", type=Path, default=None, help="parameters file (default: params.yaml)")
    parser.add_argument("--profile", default=None, help="profile to use (default: `profile` in the parameters)")
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(message)s", datefmt="%H:%M:%S")
    extra = {k: v for k, v in vars(args).items() if k not in ("params", "profile")}
    signal.signal(signal.SIGTERM, _terminated)
    try:
        cfg: Config = config.load(args.params, args.profile)
        root = args.params.resolve().parent if args.params else config.PROJECT_ROOT
        run(cfg, Paths(root), **extra)
    except (ValueError, FileNotFoundError, KeyError) as error:
        # the message names the file, record or parameter; a traceback would bury it
        print(f"stage {name} failed: {error}", file=sys.stderr)
        sys.exit(1)
