"""DVC stage `build_sids`: thin wrapper around `sidrec_core.stages.build_sids.run`.

Usage: python bench/build_sids.py [--params params.yaml] [--set sid.key=value ...]
"""

import sys

from sidrec_core.cli import main
from sidrec_core.stages.build_sids import run

if __name__ == "__main__":
    sys.exit(main(run, __doc__))
