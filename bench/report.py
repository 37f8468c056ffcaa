"""DVC stage `report`: thin wrapper around `sidrec_core.studies.pipeline_report.run_report`.

Usage: python bench/report.py [--params params.yaml] [--set section.key=value ...]
"""

import sys

from sidrec_core.cli import main
from sidrec_core.studies.pipeline_report import run_report

if __name__ == "__main__":
    sys.exit(main(run_report, __doc__))
