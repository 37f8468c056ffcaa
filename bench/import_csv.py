"""Import an interactions CSV (user,item,timestamp) [+ items CSV] into a dataset directory.

Usage: python bench/import_csv.py interactions.csv data/raw/mydata [--items items.csv]
then run the pipeline with --set data.name=mydata (or dvc exp run -S data.name=mydata).
Bad input prints one line naming the file, line and column and exits with status 2; nothing is
written then. A UTF-8 byte-order mark is accepted; a row repeating an earlier row's user, item and
timestamp is dropped and counted (duplicate_rows_dropped); with --items every item must be listed.
"""

import argparse
import json
import logging
import sys

from sidrec_core.data.csv_import import import_csv
from sidrec_core.data.dataset import DataError
from sidrec_core.io import os_error_line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("interactions")
    parser.add_argument("out_dir")
    parser.add_argument("--items", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    try:
        counts = import_csv(args.interactions, args.out_dir, args.items)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the dataset's parent folder is read-only or full
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    print(json.dumps(counts, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
