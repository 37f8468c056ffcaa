"""DVC stage `baselines`: thin wrapper around `sidrec_core.models.baselines.run_baselines`.

Usage: python bench/baselines.py [--params params.yaml] [--set section.key=value ...]
"""

import sys

from sidrec_core.cli import main
from sidrec_core.models.baselines import run_baselines

if __name__ == "__main__":
    sys.exit(main(run_baselines, __doc__))
