"""DVC stage `prepare`: thin wrapper around `sidrec_core.data.stages.run_prepare`.

Usage: python bench/prepare.py [--params params.yaml] [--set section.key=value ...]
"""

import sys

from sidrec_core.cli import main
from sidrec_core.data.stages import run_prepare

if __name__ == "__main__":
    sys.exit(main(run_prepare, __doc__))
