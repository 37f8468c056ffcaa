"""DVC stage `train_sasrec`: thin wrapper around `sidrec_core.models.sasrec_stage.run_train_sasrec`.

Usage: python bench/train_sasrec.py [--params params.yaml] [--set section.key=value ...]
"""

import sys

from sidrec_core.cli import main
from sidrec_core.models.sasrec_stage import run_train_sasrec

if __name__ == "__main__":
    sys.exit(main(run_train_sasrec, __doc__))
