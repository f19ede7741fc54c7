"""Datasets: one module per family, all registered in DATASETS.

The families are imported here, so `from dlrun.data import DATASETS` always sees every dataset.
"""

from dlrun.data import images, sequences, synthetic, tabular, timeseries  # noqa: F401  (registers the builders)
from dlrun.data.base import DataInfo, Dataset, SequenceInfo, Splits
from dlrun.data.registry import DATASETS

__all__ = ["DATASETS", "DataInfo", "Dataset", "SequenceInfo", "Splits"]
