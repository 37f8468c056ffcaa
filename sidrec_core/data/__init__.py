"""Datasets: loading, leave-one-out split, synthetic corpus, item text, embeddings, batching."""

from sidrec_core.data.dataset import DataConfig, DataError, Dataset, load_dataset, load_prepared
from sidrec_core.data.split import LeaveOneOut, Split, leave_one_out

__all__ = [
    "DataConfig",
    "DataError",
    "Dataset",
    "LeaveOneOut",
    "Split",
    "leave_one_out",
    "load_dataset",
    "load_prepared",
]
