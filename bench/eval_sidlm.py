"""DVC stage `eval_sidlm`: thin wrapper around `sidrec_core.models.sidlm_runner.run_eval_sidlm`.

Usage: python bench/eval_sidlm.py [--params params.yaml] [--set section.key=value ...]
Several processes: accelerate launch --num_processes 2 bench/eval_sidlm.py ...
"""

import sys

from sidrec_core.cli import main
from sidrec_core.models.sidlm_runner import run_eval_sidlm

if __name__ == "__main__":
    sys.exit(main(run_eval_sidlm, __doc__))
