"""The torchvision-backed sources (mnist, fashion_mnist, cifar100, flowers102) on tiny real data.

Each test writes a few real images (CIFAR-10 and Galaxy10 samples from ../shared/data) in the exact
on-disk layout the official archives extract to, then reads them back through ``build_datasets``
with ``download=False``: nothing here touches the network.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
from helpers import class_dirs
from PIL import Image
from torchvision import datasets

from astrocli.data import build_datasets
from astrocli.errors import AstroError, DataError
from astrocli.recipe import DataConfig

Record = tuple[np.ndarray, int]


def cifar_images(cifar10_small: Path, split: str, per_class: int) -> list[Record]:
    """``per_class`` real CIFAR-10 images of every class as (uint8 HxWx3, CIFAR-10 label)."""
    classes = [p.name for p in class_dirs(cifar10_small / "train")]
    return [
        (np.asarray(Image.open(path).convert("RGB")), label)
        for label, cls in enumerate(classes)
        for path in sorted((cifar10_small / split / cls).glob("*.jpg"))[:per_class]
    ]


def build(source: str, root: Path, **overrides) -> object:
    return build_datasets(DataConfig(source=source, root=str(root), download=False, **overrides))


def assert_one_line(exc: pytest.ExceptionInfo, *fragments: str) -> None:
    """A user error: an AstroError whose single-line message names every fragment."""
    message = str(exc.value)
    assert isinstance(exc.value, AstroError) and "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# --------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST: idx-ubyte files under <root>/<ClassName>/raw/
# --------------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """The idx format: 0, 0, dtype code 0x08 (ubyte), ndim, big-endian int32 sizes, then the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_mnist_like(cifar10_small: Path, raw: Path, gzipped: bool) -> dict[str, list[Record]]:
    """Real CIFAR-10 images as 28x28 grayscale in MNIST's four raw files (optionally ``.gz``)."""
    raw.mkdir(parents=True)
    records: dict[str, list[Record]] = {}
    for split, prefix, per_class in (("train", "train", 2), ("test", "t10k", 1)):
        records[split] = [
            (np.asarray(Image.fromarray(pixels).convert("L").resize((28, 28), Image.BILINEAR)), label)
            for pixels, label in cifar_images(cifar10_small, split, per_class)
        ]
        images = np.stack([pixels for pixels, _ in records[split]])
        labels = np.asarray([label for _, label in records[split]], dtype=np.uint8)
        for name, blob in (
            (f"{prefix}-images-idx3-ubyte", idx_bytes(images)),
            (f"{prefix}-labels-idx1-ubyte", idx_bytes(labels)),
        ):
            if gzipped:
                (raw / f"{name}.gz").write_bytes(gzip.compress(blob))
            else:
                (raw / name).write_bytes(blob)
    return records


@pytest.mark.parametrize(
    ("source", "dataset_cls", "mean", "gzipped"),
    [("mnist", datasets.MNIST, 0.1307, False), ("fashion_mnist", datasets.FashionMNIST, 0.2860, True)],
)
def test_mnist_like_idx_files_round_trip(
    cifar10_small: Path, tmp_path: Path, source: str, dataset_cls: type, mean: float, gzipped: bool
) -> None:
    records = write_mnist_like(cifar10_small, tmp_path / dataset_cls.__name__ / "raw", gzipped)
    bundle = build(source, tmp_path, in_chans=1, split="test")  # 2 images a class: too few to carve val
    assert (len(bundle.train), len(bundle.val)) == (20, 10)
    assert bundle.split_info["heldout_split"] == "test"
    assert bundle.class_names == list(dataset_cls.classes) and bundle.num_classes == 10
    assert bundle.mean == (mean,) and len(bundle.std) == 1
    assert bundle.train.targets == [label for _, label in records["train"]]
    assert bundle.val.targets == [label for _, label in records["test"]]
    for i in (0, 9, 19):
        img, label = bundle.train[i]
        assert img.mode == "L" and img.size == (28, 28)
        assert np.array_equal(np.asarray(img), records["train"][i][0]) and label == records["train"][i][1]
    array = bundle.val.uint8_array()
    assert array.shape == (10, 28, 28, 1)
    assert np.array_equal(array[..., 0], np.stack([pixels for pixels, _ in records["test"]]))
    assert all(np.array_equal(np.asarray(bundle.val[i][0]), array[i, ..., 0]) for i in range(10))

    explicit = build(source, tmp_path, in_chans=1, split="test")
    assert explicit.val.targets == bundle.val.targets
    with pytest.raises(DataError, match="data.split 'val' does not exist .* auto, test, stratified"):
        build(source, tmp_path, split="val")
    rgb = build(source, tmp_path, split="test")  # in_chans 3 (the default): gray repeated, stats repeated too
    img, _ = rgb.train[3]
    assert img.mode == "RGB" and rgb.mean == (mean,) * 3
    assert np.array_equal(np.asarray(img), np.repeat(records["train"][3][0][..., None], 3, axis=-1))


@pytest.mark.parametrize(
    ("source", "dataset_cls"), [("mnist", datasets.MNIST), ("fashion_mnist", datasets.FashionMNIST)]
)
def test_mnist_like_offline_names_the_files_and_where(tmp_path: Path, source: str, dataset_cls: type) -> None:
    with pytest.raises(DataError) as err:
        build(source, tmp_path)
    raw = tmp_path / dataset_cls.__name__ / "raw"
    assert_one_line(
        err, source, "train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", str(raw), "download is false"
    )


# --------------------------------------------------------------------------------------------
# CIFAR-100: binary records <coarse byte><fine byte><3072 bytes CHW> in cifar-100-binary/
# --------------------------------------------------------------------------------------------


def write_cifar100_binary(cifar10_small: Path, root: Path) -> dict[str, list[Record]]:
    """Real CIFAR-10 images in CIFAR-100's binary layout, with fine labels spread over 0..99."""
    folder = root / "cifar-100-binary"
    folder.mkdir(parents=True)
    (folder / "fine_label_names.txt").write_text("\n".join(f"fine_{i:02d}" for i in range(100)) + "\n")
    (folder / "coarse_label_names.txt").write_text("\n".join(f"coarse_{i:02d}" for i in range(20)) + "\n")
    records: dict[str, list[Record]] = {}
    for split, file_name, per_class in (("train", "train.bin", 3), ("test", "test.bin", 1)):
        images = cifar_images(cifar10_small, split, per_class)
        # Fine label: 10 per CIFAR-10 class; the coarse byte differs, so reading it by mistake shows.
        records[split] = [(pixels, label * 10 + i % per_class) for i, (pixels, label) in enumerate(images)]
        blob = b"".join(
            bytes([19 - fine // 5, fine]) + pixels.transpose(2, 0, 1).tobytes()
            for pixels, fine in records[split]
        )
        (folder / file_name).write_bytes(blob)
    return records


def test_cifar100_binary_format(cifar10_small: Path, tmp_path: Path) -> None:
    records = write_cifar100_binary(cifar10_small, tmp_path)
    bundle = build("cifar100", tmp_path, split="test")
    assert (len(bundle.train), len(bundle.val)) == (30, 10) and bundle.split_info["heldout_split"] == "test"
    assert bundle.num_classes == 100 and bundle.class_names[37] == "fine_37"
    assert bundle.mean == (0.5071, 0.4867, 0.4408)
    assert bundle.train.targets == [fine for _, fine in records["train"]]
    assert bundle.val.targets == [fine for _, fine in records["test"]]
    for i in (0, 13, 29):
        img, label = bundle.train[i]
        assert img.mode == "RGB" and img.size == (32, 32)
        assert np.array_equal(np.asarray(img), records["train"][i][0]) and label == records["train"][i][1]
    array = bundle.val.uint8_array()
    assert array.shape == (10, 32, 32, 3)
    assert np.array_equal(array, np.stack([pixels for pixels, _ in records["test"]]))
    assert all(np.array_equal(np.asarray(bundle.val[i][0]), array[i]) for i in range(10))
    with pytest.raises(DataError, match="data.split 'val' does not exist .* auto, test, stratified"):
        build("cifar100", tmp_path, split="val")
    # Stratified: each CIFAR-10 class carries 3 fine labels here, 3 images per CIFAR-10 class in
    # train, so every fine label has a single image: too few to stratify, reported in one line.
    with pytest.raises(DataError) as err:
        build("cifar100", tmp_path, split="stratified")
    assert_one_line(err, "cannot make a stratified", "30 images")


def test_cifar100_offline_and_truncated_files(cifar10_small: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        build("cifar100", tmp_path / "empty")
    assert_one_line(err, "cifar-100-binary.tar.gz", str(tmp_path / "empty"), "download is false")

    write_cifar100_binary(cifar10_small, tmp_path)
    test_file = tmp_path / "cifar-100-binary" / "test.bin"
    test_file.write_bytes(test_file.read_bytes()[:-100])
    with pytest.raises(DataError) as err:
        build("cifar100", tmp_path, split="test")
    assert_one_line(err, str(test_file), "not a whole number of 3074-byte CIFAR records")


# --------------------------------------------------------------------------------------------
# Flowers-102: flowers-102/jpg/image_NNNNN.jpg, imagelabels.mat and setid.mat
# --------------------------------------------------------------------------------------------


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_flowers102(galaxy_sample_dir: Path, root: Path) -> dict[str, list[tuple[Path, int]]]:
    """Real Galaxy10 JPEGs as Flowers-102 (2 per galaxy class, 20 images), shuffled over 3 splits.

    Returns, per split, (source JPEG, 0-based label) in setid order.
    """
    from scipy.io import savemat

    base = root / "flowers-102"
    (base / "jpg").mkdir(parents=True)
    sources = [
        (path, int(folder.name.split("-")[0]) * 10 + 3)  # 0-based flower label: 3, 13, ..., 93
        for folder in class_dirs(galaxy_sample_dir)
        for path in sorted(folder.glob("*.jpg"))[:2]
    ]
    for image_id, (path, _) in enumerate(sources, start=1):
        (base / "jpg" / f"image_{image_id:05d}.jpg").write_bytes(path.read_bytes())
    savemat(base / "imagelabels.mat", {"labels": np.asarray([[label + 1 for _, label in sources]])})
    ids = np.random.default_rng(0).permutation(np.arange(1, len(sources) + 1))
    set_ids = {"trnid": ids[:10], "valid": ids[10:14], "tstid": ids[14:]}
    savemat(base / "setid.mat", {key: value[None, :] for key, value in set_ids.items()})
    names = {"train": "trnid", "val": "valid", "test": "tstid"}
    return {split: [sources[i - 1] for i in set_ids[key].tolist()] for split, key in names.items()}


@pytest.fixture
def flowers_root(galaxy_sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The tiny Flowers-102 copy, with torchvision's md5 checks pointed at its own .mat files.

    torchvision verifies imagelabels.mat and setid.mat against the official files' md5; the
    tiny copies differ, so the expected checksums are swapped for theirs (the check still runs).
    """
    expected = write_flowers102(galaxy_sample_dir, tmp_path)
    base = tmp_path / "flowers-102"
    file_dict = dict(datasets.Flowers102._file_dict)
    for key in ("label", "setid"):
        file_dict[key] = (file_dict[key][0], md5(base / file_dict[key][0]))
    monkeypatch.setattr(datasets.Flowers102, "_file_dict", file_dict)
    return tmp_path, expected


def test_flowers102_official_splits_round_trip(flowers_root) -> None:
    root, expected = flowers_root
    bundle = build("flowers102", root)
    assert (len(bundle.train), len(bundle.val)) == (10, 4) and bundle.split_info["heldout_split"] == "val"
    assert len(bundle.test) == 6 and bundle.selected_on == "val"  # test: scored once, never selects
    assert bundle.num_classes == 102 and bundle.class_names[0] == "pink primrose"
    assert bundle.class_names == list(datasets.Flowers102.classes)
    assert bundle.train.targets == [label for _, label in expected["train"]]
    assert bundle.val.targets == [label for _, label in expected["val"]]
    for i in range(len(bundle.val)):
        img, label = bundle.val[i]
        source, expected_label = expected["val"][i]
        assert img.mode == "RGB" and img.size == (256, 256) and label == expected_label
        # The JPEG bytes are copied unchanged, so decoding gives exactly the source's pixels.
        assert np.array_equal(np.asarray(img), np.asarray(Image.open(source).convert("RGB")))

    test = build("flowers102", root, split="test")
    assert test.split_info["heldout_split"] == "test" and len(test.val) == 6
    assert test.val.targets == [label for _, label in expected["test"]]
    with pytest.raises(DataError, match="data.split 'holdout' does not exist .* auto, val, test, stratified"):
        build("flowers102", root, split="holdout")
    gray = build("flowers102", root, in_chans=1)
    assert gray.train[0][0].mode == "L" and len(gray.mean) == 1


def test_flowers102_offline_and_corrupt_files(galaxy_sample_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        build("flowers102", tmp_path / "empty")
    where = str(tmp_path / "empty" / "flowers-102")
    assert_one_line(
        err, "flowers102", "setid.mat", "imagelabels.mat", "102flowers.tgz", where, "download is false"
    )

    # Tiny .mat files fail torchvision's checksum against the official ones: one line, not a traceback.
    write_flowers102(galaxy_sample_dir, tmp_path)
    with pytest.raises(DataError) as err:
        build("flowers102", tmp_path)
    assert_one_line(err, "corrupted", str(tmp_path / "flowers-102"))
