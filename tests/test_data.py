"""Data: the bundled MNIST subset, and small files written in each real format (idx, CIFAR-10
pickle batches, image folders) loaded back; augmentation; the loader's determinism and sharding;
one-line errors for missing or malformed paths."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from onebit.data import (
    DataError,
    Loader,
    load_cifar10,
    load_dataset,
    load_imagefolder,
    load_mnist5k,
    load_mnist_idx,
    pad_crop_flip,
    random_crop,
    scale_to_unit,
)


def write_idx(path, array: np.ndarray, compress=False):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_mnist_idx(root, n_train=12, n_test=5, compress=False):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), compress)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n), compress)


def write_cifar(root, n_per_batch=8, n_test=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        batch = {
            b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, n_per_batch).tolist(),
        }
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    test = {
        b"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
        b"labels": rng.integers(0, 10, n_test).tolist(),
    }
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    names = [f"class{i}".encode() for i in range(10)]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    return folder


def write_imagefolder(root, classes=("cat", "dog"), per_class=2, size=(40, 30), test_name="test"):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", test_name):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(d / f"{i}.{'png' if i % 2 == 0 else 'jpg'}")
    return root


def test_mnist5k_split_is_fixed_and_balanced():
    train, test = load_mnist5k()
    assert (len(train), len(test)) == (4000, 1000)
    assert train.images.shape == (4000, 1, 28, 28) and train.images.dtype == torch.uint8
    again, _ = load_mnist5k()
    assert torch.equal(train.labels, again.labels)
    assert train.labels.bincount().min() > 300  # the file is sorted by label; the split shuffles
    x, y = test.get(torch.arange(4))
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1 and y.dtype == torch.int64


def test_array_dataset_is_a_torch_dataset_for_any_dataloader():
    train, test = load_mnist5k()
    assert isinstance(test, torch.utils.data.Dataset)
    x, y = test[3]
    bx, by = test.get(torch.tensor([3]))
    assert x.shape == (1, 28, 28) and torch.equal(x, bx[0]) and int(y) == int(by[0])
    batches = list(torch.utils.data.DataLoader(test, batch_size=256))
    assert len(batches) == 4 and torch.equal(torch.cat([b for _, b in batches]), test.labels)
    with pytest.raises(IndexError):
        test[len(test)]


def test_image_folder_is_a_torch_dataset(tmp_path):
    pytest.importorskip("PIL")
    train, test = load_imagefolder(write_imagefolder(tmp_path), image_size=16)
    x, y = test[1]
    bx, by = test.get(torch.tensor([1]))
    assert x.shape == (3, 16, 16) and torch.equal(x, bx[0]) and int(y) == int(by[0])
    assert len(list(torch.utils.data.DataLoader(train, batch_size=3))) == 2
    with pytest.raises(IndexError):
        test[len(test)]


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_roundtrip(tmp_path, compress):
    write_mnist_idx(tmp_path, compress=compress)
    train, test = load_mnist_idx(tmp_path)
    assert train.images.shape == (12, 1, 28, 28) and len(test) == 5
    assert train.classes == [str(i) for i in range(10)]


def test_cifar10_batches(tmp_path):
    write_cifar(tmp_path)
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        train, test = load_cifar10(root)
        assert train.images.shape == (40, 3, 32, 32) and len(test) == 6
        assert train.classes[0] == "class0" and train.augment == "pad_crop_flip"
    g = torch.Generator().manual_seed(0)
    x, _ = train.get(torch.arange(8), train=True, generator=g)
    assert x.shape == (8, 3, 32, 32)


def test_cifar10_pixel_layout(tmp_path):
    folder = write_cifar(tmp_path, n_per_batch=2, n_test=2)
    raw = pickle.loads((folder / "test_batch").read_bytes())[b"data"][0]
    _, test = load_cifar10(tmp_path)
    # row-major 1024 red, 1024 green, 1024 blue values
    assert test.images[0, 1, 0, 5] == raw[1024 + 5]


@pytest.mark.parametrize("test_name", ["test", "val"])
def test_imagefolder(tmp_path, test_name):
    pytest.importorskip("PIL")
    write_imagefolder(tmp_path, test_name=test_name)
    train, test = load_imagefolder(tmp_path, image_size=24)
    assert len(train) == 4 and len(test) == 4 and train.classes == ["cat", "dog"]
    g = torch.Generator().manual_seed(0)
    x, y = train.get(torch.arange(4), train=True, generator=g)
    assert x.shape == (4, 3, 24, 24) and y.tolist() == [0, 0, 1, 1]
    x2, _ = test.get(torch.arange(2))
    assert torch.isfinite(x2).all()


@pytest.mark.parametrize(
    "name, make, match",
    [
        ("mnist", None, "needs data_dir"),
        ("mnist", "empty", "train-images-idx3-ubyte"),
        ("mnist", "bad_idx", "not an idx file"),
        ("cifar10", "empty", "data_batch_1..5"),
        ("cifar10", "bad_pickle", "cannot unpickle"),
        ("imagefolder", "empty", "train/<class>"),
        ("imagefolder", "missing", "is not a folder"),
        ("nope", None, "allowed: mnist5k, mnist, cifar10, imagefolder"),
    ],
)
def test_bad_paths_are_one_line_errors(tmp_path, name, make, match):
    data_dir = None
    if make == "empty":
        data_dir = tmp_path
    elif make == "missing":
        data_dir = tmp_path / "nowhere"
    elif make == "bad_idx":
        write_mnist_idx(tmp_path)
        (tmp_path / "train-images-idx3-ubyte").write_bytes(b"garbage!garbage!")
        data_dir = tmp_path
    elif make == "bad_pickle":
        write_cifar(tmp_path)
        (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
        data_dir = tmp_path
    with pytest.raises(DataError, match=match) as info:
        load_dataset(name, data_dir)
    assert "\n" not in str(info.value)


def test_scale_and_augmentation():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2)
    assert scale_to_unit(x).tolist() == [[[[-1.0, 1.0]]]]
    batch = torch.randint(1, 256, (16, 3, 32, 32), dtype=torch.uint8)
    out = pad_crop_flip(batch, 4, torch.Generator().manual_seed(1))
    assert out.shape == batch.shape and out.dtype == torch.uint8
    assert (out == 0).any()  # some crops reach into the zero padding
    again = pad_crop_flip(batch, 4, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    # a crop without padding of the same size is the identity
    assert torch.equal(random_crop(batch, 32, torch.Generator()), batch)


def test_crop_takes_a_window():
    img = torch.arange(36, dtype=torch.uint8).view(1, 1, 6, 6)
    out = random_crop(img, 3, torch.Generator().manual_seed(0))
    top, left = divmod(int(out[0, 0, 0, 0]), 6)
    assert torch.equal(out[0, 0], img[0, 0, top : top + 3, left : left + 3])


def test_loader_deterministic_resumable_and_sharded():
    train, _ = load_mnist5k()
    loader = Loader(train, 100, train=True, seed=3)
    assert len(loader) == 40
    loader.set_epoch(2)
    full = [y for _, y in loader.batches()]
    tail = [y for _, y in loader.batches(start=5)]
    assert all(torch.equal(a, b) for a, b in zip(full[5:], tail))
    loader.set_epoch(3)
    assert not torch.equal(full[0], next(loader.batches())[1])
    # two ranks split every global batch in halves
    ranks = [Loader(train, 100, train=True, seed=3, rank=r, world_size=2) for r in range(2)]
    for r in ranks:
        r.set_epoch(2)
    halves = [next(r.batches())[1] for r in ranks]
    assert torch.equal(torch.cat(halves), full[0])
    # evaluation covers every example once, across ranks
    ev = [Loader(train, 256, train=False, rank=r, world_size=3).indices() for r in range(3)]
    assert sorted(torch.cat(ev).tolist()) == list(range(4000))


class EvilBatch:
    """Unpickling this object creates ``marker``: code run by reading a data file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_malicious_cifar_batch_is_refused_and_runs_nothing(tmp_path):
    folder = write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": EvilBatch(marker), b"labels": [0]}))
    with pytest.raises(DataError, match=r"test_batch is not a CIFAR-10 python batch: it refers to \w+\.open") as info:
        load_cifar10(tmp_path)
    assert "\n" not in str(info.value) and not marker.exists()


@pytest.mark.parametrize("protocol", [3, 5])
def test_cifar_batches_of_numpy_1_and_protocol_5_load(tmp_path, protocol):
    """The real batches name numpy.core.multiarray (numpy 1); protocol 5 pickles use _frombuffer."""
    folder = write_cifar(tmp_path, n_per_batch=2, n_test=2)
    raw = pickle.loads((folder / "test_batch").read_bytes())
    data = pickle.dumps(raw, protocol=protocol)
    if protocol == 3:
        data = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
        assert b"numpy.core.multiarray\n_reconstruct" in data
    (folder / "test_batch").write_bytes(data)
    _, test = load_cifar10(tmp_path)
    assert torch.equal(test.images.reshape(2, -1), torch.tensor(raw[b"data"]))


def test_damaged_small_images_are_named_before_training(tmp_path):
    """Small images are all decoded when the folder is loaded: a damaged one stops the run before
    it starts, named, instead of crashing training mid-epoch (docs/reliability.md)."""
    pytest.importorskip("PIL")
    write_imagefolder(tmp_path, per_class=3)
    bad = tmp_path / "train" / "dog" / "1.jpg"
    bad.write_bytes(bad.read_bytes()[:300])
    (tmp_path / "test" / "cat" / "x.png").write_bytes(b"")
    with pytest.raises(
        DataError, match=r"2 of 13 images under .* cannot be decoded: .*dog/1\.jpg \(.*cat/x\.png"
    ) as info:
        load_imagefolder(tmp_path, image_size=24)
    assert "\n" not in str(info.value) and "remove or replace them" in str(info.value)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_damaged_large_image_is_named_and_replaced_while_decoding(tmp_path, workers):
    """Large images are not decoded at load time (a cheap start); a damaged one is reported with
    its path when it is reached and the next image stands in, so the epoch goes on."""
    pytest.importorskip("PIL")
    write_imagefolder(tmp_path, per_class=3, size=(90, 70))
    bad = tmp_path / "train" / "dog" / "1.jpg"
    bad.write_bytes(bad.read_bytes()[:300])
    train, _ = load_imagefolder(tmp_path, image_size=24)
    seen = []
    loader = Loader(train, 6, train=True, seed=1, num_workers=workers, report=seen.append)
    (x, y), *_ = list(loader)
    loader.close()
    assert x.shape == (6, 3, 24, 24) and torch.isfinite(x).all()
    assert len(seen) == 1 and "dog/1.jpg" in seen[0] and "\n" not in seen[0]
    assert sorted(y.tolist()) == [0, 0, 0, 1, 1, 1]  # dog/2.jpg stands in for dog/1.jpg
    with pytest.raises(DataError, match=r"cannot decode .*dog/1\.jpg"):
        train.get(torch.arange(len(train)))


def test_many_damaged_images_name_three_and_count_the_rest(tmp_path):
    pytest.importorskip("PIL")
    write_imagefolder(tmp_path, per_class=3)
    for f in (tmp_path / "train").rglob("*.png"):
        f.write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"4 of 12 images .*; and 1 more; remove or replace them$"):
        load_imagefolder(tmp_path, image_size=24)


@pytest.mark.parametrize("bad", [-5, 2.5, True])
def test_imagefolder_image_size_must_be_an_int(tmp_path, bad):
    with pytest.raises(DataError, match=f"image_size={bad!r} must be an int >= 0"):
        load_imagefolder(tmp_path, image_size=bad)


def test_labels_must_be_class_indices(tmp_path):
    write_mnist_idx(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 1, 2, 3, 255]))
    with pytest.raises(DataError, match=r"test labels in .*: labels must be 0\.\.9, found 0\.\.255"):
        load_mnist_idx(tmp_path)


def _all_batches(loader, start=0):
    return [(x.clone(), y.clone()) for x, y in loader.batches(start)]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b))


def test_workers_give_the_same_batches_bit_for_bit_and_resume_mid_epoch(tmp_path):
    """0 or 2 worker processes, straight or resumed at batch 2: the same data, bit for bit (the
    order from (seed, epoch), each batch's augmentation from (seed, epoch, batch, rank))."""
    pytest.importorskip("PIL")
    write_imagefolder(tmp_path, per_class=6, size=(90, 70))
    train, test = load_imagefolder(tmp_path, image_size=24)
    assert train.decodes_files and "decoded batch by batch" in train.image_note
    inline = Loader(train, 4, train=True, seed=5)
    workers = Loader(train, 4, train=True, seed=5, num_workers=2)
    for epoch in (0, 1):
        inline.set_epoch(epoch)
        workers.set_epoch(epoch)
        full = _all_batches(inline)
        assert len(full) == 3 and _same(full, _all_batches(workers))
        assert _same(full[2:], _all_batches(workers, start=2))  # persistent workers, a new start
    assert not torch.equal(full[0][0], _all_batches(Loader(train, 4, train=True, seed=6))[0][0])
    # two ranks with workers take the halves of every global batch (augmented by rank)
    ranks = [Loader(train, 4, train=True, seed=5, rank=r, world_size=2, num_workers=1) for r in range(2)]
    for r in ranks:
        r.set_epoch(1)
    halves = [_all_batches(r) for r in ranks]
    for b, (_, y) in enumerate(full):
        assert torch.equal(torch.cat([halves[0][b][1], halves[1][b][1]]), y)
    alone = Loader(train, 4, train=True, seed=5, rank=1, world_size=2)
    alone.set_epoch(1)
    assert _same(halves[1], _all_batches(alone))
    ev = Loader(test, 5, train=False, num_workers=2)
    assert _same(_all_batches(ev), _all_batches(Loader(test, 5, train=False)))
    for loader in (workers, ev, *ranks):
        loader.close()


def _float_batch_as_before(dataset, indices, generator):
    """The reference: a training batch as image folders built it when workers sent float batches
    (decode, crop, resize, copy, flip, stack, then ``(x.float() - mean) / std``), step by step."""
    from PIL import Image

    from onebit.data.decode import _draft, random_resized_box

    size, images = dataset.image_size, []
    for i in indices.tolist():
        with Image.open(dataset.paths[i]) as img:
            box = random_resized_box(*img.size, generator)
            if img.format == "JPEG":
                box = _draft(img, box, size)
            img = img.convert("RGB").resize((size, size), Image.BICUBIC, box=box)
            x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        if torch.rand((), generator=generator) < 0.5:
            x = x.flip(-1)
        images.append(x)
    return (torch.stack(images).float() - dataset.mean) / dataset.std


@pytest.mark.parametrize("workers, device", [(0, None), (2, None), (0, "cpu")])
def test_image_folder_batches_are_the_float_batches_of_before(tmp_path, workers, device):
    """Workers send uint8 images and the training process normalises them: every batch holds
    exactly the floats the float-sending pipeline gave (JPEGs in draft mode, PNGs, a grey JPEG)."""
    from PIL import Image

    write_imagefolder(tmp_path, per_class=6, size=(200, 150))
    grey = np.random.default_rng(1).integers(0, 256, (150, 200), dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "train" / "cat" / "grey.jpg")
    train, _ = load_imagefolder(tmp_path, image_size=24)
    loader = Loader(train, 4, train=True, seed=7, num_workers=workers, device=device)
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        for b, (x, _) in enumerate(loader):
            plan = loader._plan
            want = _float_batch_as_before(train, plan.chunk(epoch, b), plan.generator(epoch, b))
            assert x.dtype == torch.float32 and torch.equal(x, want)
    loader.close()


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), st.integers(1, 9), st.integers(0, 2**32 - 1))
def test_normalise_is_the_float_arithmetic_of_before(n, side, seed):
    """``normalise`` (in place after one conversion) equals ``(x.float() - mean) / std`` exactly."""
    from onebit.data import ImageFolderDataset

    dataset = ImageFolderDataset([], [], [], image_size=side)
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)
    y = dataset.normalise(x)
    assert torch.equal(y, (x.float() - dataset.mean) / dataset.std) and x.dtype == torch.uint8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: GPU normalisation not compared")
def test_normalising_on_cuda_gives_the_cpu_floats():
    from onebit.data import ImageFolderDataset

    dataset = ImageFolderDataset([], [], [], image_size=32)
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(dataset.normalise(x.cuda()).cpu(), dataset.normalise(x))


@pytest.mark.parametrize(
    "size, image_size, side, small, why",
    [
        ((32, 32), 0, 32, True, "the images' own size"),
        ((40, 30), 0, 224, False, "not square"),
        ((40, 30), 24, 24, True, "(set)"),
        ((90, 90), 0, 90, False, "the images' own size"),
    ],
)
def test_image_size_defaults_to_the_images_own_and_small_images_live_in_memory(
    tmp_path, size, image_size, side, small, why
):
    pytest.importorskip("PIL")
    write_imagefolder(tmp_path, size=size)
    train, test = load_dataset("imagefolder", tmp_path, image_size=image_size)
    assert train.shape == test.shape == (3, side, side) and why in train.image_note
    assert getattr(train, "decodes_files", False) is not small
    if small:  # decoded once: CIFAR-10's augmentation and [-1, 1] scaling, as the in-memory CIFAR-10
        assert train.images.dtype == torch.uint8 and train.augment == "pad_crop_flip"
        x, _ = train.get(torch.arange(4), train=True, generator=torch.Generator().manual_seed(0))
        assert x.shape == (4, 3, side, side) and x.min() >= -1 and x.max() <= 1


def test_small_images_of_another_size_are_resized_and_counted(tmp_path):
    from PIL import Image

    pytest.importorskip("PIL")
    write_imagefolder(tmp_path, per_class=40, size=(32, 32))
    Image.new("RGB", (20, 28)).save(tmp_path / "train" / "cat" / "0a.png")  # a file the size sample skips
    train, _ = load_imagefolder(tmp_path)
    assert train.shape == (3, 32, 32) and "1 of 161 images had another size and were resized" in train.image_note


@pytest.mark.parametrize("draft", [True, False])
def test_draft_decoding_keeps_the_picture(tmp_path, draft):
    """Draft mode decodes a large JPEG at a reduced DCT scale: the crop is still the same picture
    (a smooth gradient resized either way is within a few grey levels)."""
    from PIL import Image

    pytest.importorskip("PIL")
    from onebit.data.decode import centre_box, decode_crop

    ramp = np.tile(np.linspace(0, 255, 800, dtype=np.uint8), (600, 1))
    Image.fromarray(np.stack([ramp, ramp.T[:600, :600].repeat(2, 1)[:, :800], ramp], -1)).save(
        tmp_path / "big.jpg", quality=95
    )
    with Image.open(tmp_path / "big.jpg") as img:
        img.draft("RGB", (100, 75))
        assert img.size == (100, 75)  # the file decodes at 1/8 scale when asked
    x = decode_crop(tmp_path / "big.jpg", 64, centre_box, draft=draft).astype(np.float32)
    full = decode_crop(tmp_path / "big.jpg", 64, centre_box, draft=False).astype(np.float32)
    assert x.shape == (64, 64, 3) and np.abs(x - full).mean() < 4


def test_an_image_folder_run_resumed_mid_epoch_with_workers_equals_one_without(tmp_path):
    """Training end to end: 2 worker processes, stopped by Ctrl-C after step 2 and resumed, ends
    with the weights of a straight run that decodes in the training process. The run header
    names the worker count (auto by default)."""
    import io
    import signal

    from onebit.data import default_workers
    from onebit.training import Interrupted, train
    from onebit.training.checkpoint import load
    from onebit.training.config import defaults

    pytest.importorskip("PIL")
    data = write_imagefolder(tmp_path / "images", per_class=6, size=(90, 70))
    config = dict(
        defaults(),
        dataset="imagefolder",
        data_dir=str(data),
        image_size=24,
        batch_size=4,
        epochs=2,
        threads=1,
        plots=False,
        tensorboard=False,
        log_every=1,
    )
    straight = train(dict(config, out=str(tmp_path / "a"), num_workers=0), verbose=False)
    header = io.StringIO()
    train(dict(config, out=str(tmp_path / "c"), epochs=1, max_steps=1), stream=header)
    auto = default_workers()
    assert f"data: image_size 24 (set), decoded batch by batch, {auto} worker processes (num_workers auto" in (
        header.getvalue()
    )

    def interrupt(epoch, batch, step):
        if step == 2:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(Interrupted) as info:
        train(dict(config, out=str(tmp_path / "b"), num_workers=2), verbose=False, on_step=interrupt)
    resumed = train(load(info.value.run_dir / "last.pt")["config"], resume=info.value.run_dir, verbose=False)
    a, b = (load(f"{s['run_dir']}/last.pt")["model"] for s in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a) and resumed["steps"] == straight["steps"] == 6


def test_small_images_too_many_for_memory_are_decoded_batch_by_batch(tmp_path, monkeypatch):
    import onebit.data.datasets as datasets

    pytest.importorskip("PIL")
    write_imagefolder(tmp_path, size=(32, 32))
    monkeypatch.setattr(datasets, "_physical_memory", lambda: 4 * 3 * 32 * 32 * 8)  # room for 8 of 8 images
    train, _ = load_imagefolder(tmp_path)
    assert not getattr(train, "decodes_files", False)
    monkeypatch.setattr(datasets, "_physical_memory", lambda: 4 * 3 * 32 * 32 * 7)  # room for 7
    train, _ = load_imagefolder(tmp_path)
    assert train.decodes_files and "(too many to hold in memory)" in train.image_note and train.shape == (3, 32, 32)
