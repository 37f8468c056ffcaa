"""Provenance backfill: ``python bench/backfill_provenance.py`` writes
``experiments/provenance_backfill.jsonl``: for each committed complete trial, the fields it did
not record and ``landed_in`` (the first commit whose storage held it: an upper bound on its code).

Thin wrapper around :mod:`sidrec_core.studies.provenance`.
"""

import sys

from sidrec_core.studies.provenance import main

if __name__ == "__main__":
    sys.exit(main())
