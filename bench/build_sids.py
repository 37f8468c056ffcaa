"""DVC stage `build_sids`: thin wrapper around `sidrec_core.sid.build.run_build_sids`.

Usage: python bench/build_sids.py [--params params.yaml] [--set sid.key=value ...]
"""

import sys

from sidrec_core.cli import main
from sidrec_core.sid.build import run_build_sids

if __name__ == "__main__":
    sys.exit(main(run_build_sids, __doc__))
