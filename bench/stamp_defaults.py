"""Record on every Optuna study of the committed study storages the defaults its trials ran on
(:mod:`sidrec_core.studies.defaults`), for studies made before launches recorded them:
``python bench/stamp_defaults.py [--check]``. Such a study's trials count for the current
definition of their level (the rule that held when they ran), so they ran on the params the
repository holds when this runs: ``params.yaml``, the profile, and the ``--set`` overrides the
study recorded. Run it before a default changes, never after.
"""

from __future__ import annotations

import argparse
import sys

from sidrec_core.studies.defaults import DEFAULTS, section_defaults
from sidrec_core.studies.registry import STUDIES
from sidrec_core.studies.runner import EXPERIMENTS_DIR
from sidrec_core.studies.storage import sections, study_journal


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="list what it would record, change none")
    args = ap.parse_args(argv)
    for name, study in STUDIES.items():
        journal = study_journal(EXPERIMENTS_DIR, name)
        for _, ostudy in sections(journal, name):
            if ostudy.user_attrs.get(DEFAULTS) is not None:
                continue
            defaults = section_defaults(study, ostudy)
            print(f"{ostudy.study_name}: {len(defaults)} params recorded", file=sys.stderr)
            if not args.check:
                ostudy.set_user_attr(DEFAULTS, defaults)
    return 0


if __name__ == "__main__":
    sys.exit(main())
