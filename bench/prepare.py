"""DVC stage `prepare`: thin wrapper around `sidrec_core.stages.prepare.run`.

Usage: python bench/prepare.py [--params params.yaml] [--set section.key=value ...]
"""

import sys

from sidrec_core.cli import main
from sidrec_core.stages.prepare import run

if __name__ == "__main__":
    sys.exit(main(run, __doc__))
