"""DVC stage `baselines`: thin wrapper around `sidrec_core.stages.baselines.run`.

Usage: python bench/baselines.py [--params params.yaml] [--set section.key=value ...]
"""

import sys

from sidrec_core.cli import main
from sidrec_core.stages.baselines import run

if __name__ == "__main__":
    sys.exit(main(run, __doc__))
