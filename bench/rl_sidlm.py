"""DVC stage `rl_sidlm`: thin wrapper around `sidrec_core.stages.rl_sidlm.run`.

Usage: python bench/rl_sidlm.py [--params params.yaml] [--set section.key=value ...]
"""

import sys

from sidrec_core.cli import main
from sidrec_core.stages.rl_sidlm import run

if __name__ == "__main__":
    sys.exit(main(run, __doc__))
