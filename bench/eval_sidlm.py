"""DVC stage `eval_sidlm`: thin wrapper around `sidrec_core.stages.eval_sidlm.run`.

Usage: python bench/eval_sidlm.py [--params params.yaml] [--set section.key=value ...]
"""

import sys

from sidrec_core.cli import main
from sidrec_core.stages.eval_sidlm import run

if __name__ == "__main__":
    sys.exit(main(run, __doc__))
