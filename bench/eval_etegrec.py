"""DVC stage `eval_etegrec`: thin wrapper around `sidrec_core.stages.eval_etegrec.run`.

Usage: python bench/eval_etegrec.py [--params params.yaml] [--set section.key=value ...]
"""

import sys

from sidrec_core.cli import main
from sidrec_core.stages.eval_etegrec import run

if __name__ == "__main__":
    sys.exit(main(run, __doc__))
