"""DVC stage `report`: thin wrapper around `sidrec_core.stages.report.run`.

Usage: python bench/report.py [--params params.yaml] [--set section.key=value ...]
"""

import sys

from sidrec_core.cli import main
from sidrec_core.stages.report import run

if __name__ == "__main__":
    sys.exit(main(run, __doc__))
