"""DVC stage `build_rpg_sids`: thin wrapper around `sidrec_core.stages.build_rpg_sids.run`.

Usage: python bench/build_rpg_sids.py [--params params.yaml] [--set section.key=value ...]
"""

import sys

from sidrec_core.cli import main
from sidrec_core.stages.build_rpg_sids import run

if __name__ == "__main__":
    sys.exit(main(run, __doc__))
