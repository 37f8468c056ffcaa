"""DVC stage `embed`: thin wrapper around `sidrec_core.stages.embed.run`.

Usage: python bench/embed.py [--params params.yaml] [--set section.key=value ...]
"""

import sys

from sidrec_core.cli import main
from sidrec_core.stages.embed import run

if __name__ == "__main__":
    sys.exit(main(run, __doc__))
