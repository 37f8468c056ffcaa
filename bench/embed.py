"""DVC stage `embed`: thin wrapper around `sidrec_core.data.stages.run_embed`.

Usage: python bench/embed.py [--params params.yaml] [--set section.key=value ...]
"""

import sys

from sidrec_core.cli import main
from sidrec_core.data.stages import run_embed

if __name__ == "__main__":
    sys.exit(main(run_embed, __doc__))
