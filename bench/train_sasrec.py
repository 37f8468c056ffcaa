"""DVC stage `train_sasrec`: thin wrapper around `sidrec_core.stages.train_sasrec.run`.

Usage: python bench/train_sasrec.py [--params params.yaml] [--set section.key=value ...]
"""

import sys

from sidrec_core.cli import main
from sidrec_core.stages.train_sasrec import run

if __name__ == "__main__":
    sys.exit(main(run, __doc__))
