"""DVC stage `train_sidlm`: thin wrapper around `sidrec_core.stages.train_sidlm.run`.

Usage: python bench/train_sidlm.py [--params params.yaml] [--set section.key=value ...]
Several processes: accelerate launch --num_processes 2 bench/train_sidlm.py ...
"""

import sys

from sidrec_core.cli import main
from sidrec_core.stages.train_sidlm import run

if __name__ == "__main__":
    sys.exit(main(run, __doc__))
