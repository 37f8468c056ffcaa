"""DVC stage `eval_rpg`: thin wrapper around `sidrec_core.stages.eval_rpg.run`.

Usage: python bench/eval_rpg.py [--params params.yaml] [--set section.key=value ...]
"""

import sys

from sidrec_core.cli import main
from sidrec_core.stages.eval_rpg import run

if __name__ == "__main__":
    sys.exit(main(run, __doc__))
