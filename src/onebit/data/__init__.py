"""Data without a network: the bundled MNIST subset, MNIST idx files, CIFAR-10 pickle batches and
image folders, with batched tensor augmentation and a deterministic, resumable loader."""

from .datasets import (
    AUGMENTATIONS,
    DATASETS,
    ArrayDataset,
    DataError,
    ImageFolderDataset,
    load_cifar10,
    load_dataset,
    load_imagefolder,
    load_mnist5k,
    load_mnist_idx,
    mnist5k_path,
    read_idx,
)
from .loader import Loader, default_workers
from .transforms import pad_crop_flip, random_crop, random_flip, scale_to_unit

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "ArrayDataset",
    "DataError",
    "ImageFolderDataset",
    "Loader",
    "default_workers",
    "load_cifar10",
    "load_dataset",
    "load_imagefolder",
    "load_mnist5k",
    "load_mnist_idx",
    "mnist5k_path",
    "pad_crop_flip",
    "random_crop",
    "random_flip",
    "read_idx",
    "scale_to_unit",
]
