"""What the study scripts ``bench/ablate.py`` and ``bench/tune.py`` share: their common options
and the one-line ``error:`` exit for bad input."""

from __future__ import annotations

import argparse
import sys

import sqlalchemy.exc

from sidrec_core.config import ConfigError
from sidrec_core.io import os_error_line
from sidrec_core.studies.profiles import PROFILES_DIR
from sidrec_core.studies.runner import EXPERIMENTS_DIR

EXPECTED_ERRORS = (ConfigError, KeyError, ValueError, OSError, sqlalchemy.exc.OperationalError)
PROFILES = " | ".join(sorted(f.stem for f in PROFILES_DIR.glob("*.yaml")))
STORE, LIST = {"action": "store_true"}, {"action": "append", "default": []}
SHARED = {  # the options of bench/ablate.py and bench/tune.py: flag -> argparse keywords
    "--storage": {"help": "Optuna journal or RDB URL (default: the study's own optuna.jsonl)"},
    "--new-storage": {**STORE, "help": "create --storage if missing (else a typo is an error)"},
    "--max-trials": {"type": int, "help": "stop each worker after this many trials (resume later)"},
    "--time-budget": {"type": float, "metavar": "MINUTES", "help": "start no trial ending later"},
    "--out": {"default": str(EXPERIMENTS_DIR), "help": "reports and trials"},
    "--params": {"default": "params.yaml", "help": "params file under the profile"},
    "--set": {**LIST, "dest": "sets", "metavar": "KEY=VALUE", "help": "override (repeatable)"},
    "--report-only": {**STORE, "help": "rewrite the reports from the storage, run nothing"},
    "--to-mlflow": {**STORE, "help": "rebuild MLflow from the committed storage; runs nothing"},
    "--tracking-uri": {"help": "MLflow store (default MLFLOW_TRACKING_URI, sqlite:///mlflow.db)"},
}


def parser(doc: str, options: dict[str, dict], profile: str) -> argparse.ArgumentParser:
    """``options`` and :data:`SHARED` (``--profile`` defaulting to ``profile``)."""
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--profile", default=profile, help=f"{PROFILES} (experiments/profiles)")
    for flag, keywords in {**options, **SHARED}.items():
        p.add_argument(flag, **keywords)
    return p


def error_exit(exc: BaseException, storage: str | None, out: str) -> int:
    """Print ``exc`` (bad input, a read-only or full disk) as one ``error:`` line; return 2."""
    line = os_error_line(exc) if isinstance(exc, OSError) else str(exc)  # --out read-only, full
    if isinstance(exc, sqlalchemy.exc.OperationalError):  # the SQLite storage's disk is full
        line = f"Optuna storage {storage or f'under {out}'}: {exc.orig}"
    print(f"error: {line}", file=sys.stderr)
    return 2
