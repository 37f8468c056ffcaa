"""DVC stage `item_embeddings`: thin wrapper around `sidrec_core.stages.item_embeddings.run`.

Usage: python bench/item_embeddings.py [--params params.yaml] [--set section.key=value ...]
"""

import sys

from sidrec_core.cli import main
from sidrec_core.stages.item_embeddings import run

if __name__ == "__main__":
    sys.exit(main(run, __doc__))
