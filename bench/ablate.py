"""Ablation bench: ``python bench/ablate.py --list`` / ``--study NAME [--profile smoke|dev|full]``.

Thin wrapper around :mod:`sidrec_core.studies.cli`; see experiments/README.md.
"""

import sys

from sidrec_core.studies.cli import main

if __name__ == "__main__":
    sys.exit(main())
