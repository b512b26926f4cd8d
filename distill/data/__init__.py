"""Data: datasets (digits, IDX, TFDS), pooling, site orderings."""

from distill.data.datasets import (
           DATASETS,
           DEFAULT_IDX_DIRS,
           Dataset,
           load_dataset,
           read_idx,
)
from distill.data.orderings import ORDERINGS, site_order
from distill.data.pooling import downsample

__all__ = ["DATASETS", "DEFAULT_IDX_DIRS", "ORDERINGS", "Dataset", "load_dataset", "read_idx", "site_order",
           "downsample"]
