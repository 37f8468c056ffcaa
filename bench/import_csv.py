"""Import an interactions CSV (user,item,timestamp) [+ items CSV] into a dataset directory.

Usage: python bench/import_csv.py interactions.csv data/raw/mydata [--items items.csv]
then run the pipeline with --set data.name=mydata (or dvc exp run -S data.name=mydata).
"""

import argparse
import json
import sys

from sidrec_core.data.csv_import import import_csv
from sidrec_core.data.dataset import DataError

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("interactions")
    parser.add_argument("out_dir")
    parser.add_argument("--items", default=None)
    args = parser.parse_args()
    try:
        print(json.dumps(import_csv(args.interactions, args.out_dir, args.items), indent=2))
    except DataError as exc:
        sys.exit(f"error: {exc}")
