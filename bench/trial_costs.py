"""Trial costs: ``python bench/trial_costs.py`` writes ``experiments/trial_costs.md``, the median
trial minutes per study behind the seed counts the registry declares.

Thin wrapper around :mod:`sidrec_core.studies.seeds`.
"""

import sys

from sidrec_core.studies.seeds import main

if __name__ == "__main__":
    sys.exit(main())
