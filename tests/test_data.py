"""Data sources on tiny real data (no network) and the train/eval transforms."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import class_dirs
from PIL import Image

from astrocli.data import build_datasets, build_eval_transform, build_train_transform
from astrocli.errors import DataError
from astrocli.recipe import load_recipe


def recipe_for(*overrides: str):
    return load_recipe(None, list(overrides))


def test_imagefolder_with_test_folder(cifar10_small: Path) -> None:
    bundle = build_datasets(recipe_for("data.source=imagefolder", f"data.root={cifar10_small}").data)
    assert bundle.class_names[:2] == ["airplane", "automobile"] and bundle.num_classes == 10
    # auto: the held-out split is carved out of train (stratified); test/ is kept for one final score
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (180, 20, 50)
    assert bundle.split_info["heldout_split"] == "stratified" and bundle.split_info["test_split"] == "test"
    assert set(bundle.split_info["counts"]["val"].values()) == {2}
    assert set(bundle.split_info["counts"]["test"].values()) == {5}
    json.dumps(bundle.split_info)  # JSON-able, recorded as split.json
    papers = build_datasets(recipe_for(f"data.root={cifar10_small}", "data.split=test").data)
    assert (len(papers.train), len(papers.val)) == (200, 50) and papers.test is None
    img, label = papers.val[0]
    assert img.mode == "RGB" and img.size == (32, 32) and label == papers.val.targets[0] == 0
    gray = build_datasets(recipe_for(f"data.root={cifar10_small}", "data.in_chans=1").data)
    assert gray.train[0][0].mode == "L" and len(gray.mean) == 1
    with pytest.raises(DataError, match="data.split 'val' does not exist .* auto, test, stratified"):
        build_datasets(recipe_for(f"data.root={cifar10_small}", "data.split=val").data)


def test_class_folders_at_root_get_a_seeded_stratified_split(galaxy_sample_dir: Path) -> None:
    def build(seed: int):
        return build_datasets(
            recipe_for(
                f"data.root={galaxy_sample_dir}", "data.val_fraction=0.2", f"data.split_seed={seed}"
            ).data
        )

    first, again, other = build(0), build(0), build(1)
    assert first.class_names[0] == "0-disturbed" and len(first.train) + len(first.val) == 100
    assert set(first.split_info["counts"]["val"].values()) == {2}
    assert [s[0] for s in first.val.samples] == [s[0] for s in again.val.samples]
    assert [s[0] for s in first.val.samples] != [s[0] for s in other.val.samples]
    assert first.val[0][0].size == (256, 256)


def test_odd_modes_are_converted_and_bad_files_reported(
    cifar10_small: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "mixed"
    shutil.copytree(cifar10_small, root)
    source = sorted((root / "train" / "cat").glob("*.jpg"))[0]
    rgb = Image.open(source).convert("RGB")
    rgb.convert("L").save(root / "train" / "cat" / "gray.png")
    rgb.convert("P", palette=Image.ADAPTIVE).save(root / "train" / "cat" / "palette.png")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(root / "train" / "cat" / "rgba.png")
    Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 200).save(root / "train" / "cat" / "deep.png")
    (root / "train" / "cat" / "corrupt.jpg").write_bytes(b"this is not an image")
    truncated = root / "train" / "dog" / "truncated.jpg"
    data = source.read_bytes()
    truncated.write_bytes(data[: len(data) * 3 // 4])  # a valid header, a cut body

    bundle = build_datasets(recipe_for(f"data.root={root}").data)
    assert "corrupt.jpg" in capsys.readouterr().err  # one warning line, not through the warnings filter
    paths = [Path(p).name for p, _ in bundle.train.samples]
    assert "corrupt.jpg" not in paths and {"gray.png", "palette.png", "rgba.png", "deep.png"} <= set(paths)
    for name in ("gray.png", "palette.png", "rgba.png", "deep.png"):
        img, label = bundle.train[paths.index(name)]
        assert img.mode == "RGB" and img.size == (32, 32) and bundle.class_names[label] == "cat"
    index = paths.index("truncated.jpg")
    img, label = bundle.train[index]  # replaced by the next readable sample, reported by path
    assert img.mode == "RGB" and label == bundle.train.targets[index + 1]
    assert "truncated.jpg" in capsys.readouterr().err


def write_cifar10_binary(cifar10_small: Path, root: Path) -> dict[str, list[tuple[np.ndarray, int]]]:
    """CIFAR-10's binary on-disk format (<label><3072 bytes CHW>) made from real CIFAR-10 images."""
    classes = [p.name for p in class_dirs(cifar10_small / "train")]
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    (folder / "batches.meta.txt").write_text("\n".join(classes) + "\n\n")
    records: dict[str, list[tuple[np.ndarray, int]]] = {}
    for split, n_per_class in (("train", 2), ("test", 1)):
        records[split] = [
            (np.asarray(Image.open(path).convert("RGB")), label)
            for label, cls in enumerate(classes)
            for path in sorted((cifar10_small / split / cls).glob("*.jpg"))[:n_per_class]
        ]
    files = {f"data_batch_{i}.bin": records["train"][(i - 1) * 4 : i * 4] for i in range(1, 6)}
    files["test_batch.bin"] = records["test"]
    for name, rows in files.items():
        blob = b"".join(bytes([label]) + pixels.transpose(2, 0, 1).tobytes() for pixels, label in rows)
        (folder / name).write_bytes(blob)
    return records


def test_cifar10_binary_format(cifar10_small: Path, tmp_path: Path) -> None:
    records = write_cifar10_binary(cifar10_small, tmp_path)
    bundle = build_datasets(
        recipe_for(
            "data.source=cifar10", f"data.root={tmp_path}", "data.download=false", "data.split=test"
        ).data
    )
    assert (len(bundle.train), len(bundle.val)) == (20, 10) and bundle.split_info["heldout_split"] == "test"
    assert bundle.class_names[3] == "cat" and bundle.mean == (0.4914, 0.4822, 0.4465)
    for i in (0, 7, 19):
        img, label = bundle.train[i]
        assert np.array_equal(np.asarray(img), records["train"][i][0]) and label == records["train"][i][1]
    array = bundle.val.uint8_array()
    assert array.shape == (10, 32, 32, 3) and np.array_equal(array[4], records["test"][4][0])


def test_cifar10_offline_names_the_file_and_where(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        build_datasets(recipe_for("data.source=cifar10", f"data.root={tmp_path}", "data.download=false").data)
    message = str(err.value)
    assert "cifar-10-binary.tar.gz" in message and str(tmp_path) in message and "\n" not in message
    offline = recipe_for(
        "data.source=cifar10", f"data.root={tmp_path}", "data.url=http://127.0.0.1:9/cifar-10-binary.tar.gz"
    )
    with pytest.raises(DataError, match="cannot download .* place it at"):
        build_datasets(offline.data)


def test_tiny_imagenet_layout(cifar10_small: Path, tmp_path: Path) -> None:
    base = tmp_path / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819", "n01641577"]
    classes = ["airplane", "bird", "cat"]
    lines = []
    for wnid, cls in zip(wnids, classes, strict=True):
        (base / "train" / wnid / "images").mkdir(parents=True)
        for i, path in enumerate(sorted((cifar10_small / "train" / cls).glob("*.jpg"))[:3]):
            shutil.copy(path, base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG")
        (base / "val" / "images").mkdir(parents=True, exist_ok=True)
        for i, path in enumerate(sorted((cifar10_small / "test" / cls).glob("*.jpg"))[:2]):
            name = f"val_{wnid}_{i}.JPEG"
            shutil.copy(path, base / "val" / "images" / name)
            lines.append(f"{name}\t{wnid}\t0\t0\t32\t32")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (base / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")
    (base / "words.txt").write_text(
        "".join(f"{w}\t{c}, something\n" for w, c in zip(wnids, classes, strict=True))
    )
    bundle = build_datasets(
        recipe_for("data.source=tiny_imagenet", f"data.root={tmp_path}", "data.download=false").data
    )
    assert bundle.class_names == classes and bundle.split_info["wnids"] == wnids
    assert (len(bundle.train), len(bundle.val)) == (9, 6)
    assert sorted(bundle.val.targets) == [0, 0, 1, 1, 2, 2]
    img, label = bundle.val[0]
    assert img.mode == "RGB" and label == wnids.index(Path(bundle.val.samples[0][0]).name.split("_")[1])


def test_digits_is_real_offline_and_stratified() -> None:
    gray = build_datasets(recipe_for("data.source=digits", "data.img_size=32", "data.in_chans=1").data)
    assert len(gray.train) + len(gray.val) == 1797 and len(gray.val) == 180
    assert gray.class_names == [str(d) for d in range(10)]
    img, _ = gray.train[0]
    assert img.mode == "L" and img.size == (32, 32) and np.asarray(img).max() > 200
    assert gray.train.uint8_array().shape == (len(gray.train), 32, 32, 1)
    color = build_datasets(recipe_for("data.source=digits", "data.img_size=16", "data.in_chans=3").data)
    assert color.train[0][0].mode == "RGB" and len(color.mean) == 3 and color.mean[0] == color.mean[2]


def test_statistics_override_and_validation(cifar10_small: Path) -> None:
    cfg = recipe_for(
        f"data.root={cifar10_small}", "data.mean=[0.5, 0.5, 0.5]", "data.std=[0.25, 0.25, 0.25]"
    ).data
    bundle = build_datasets(cfg)
    assert bundle.mean == (0.5, 0.5, 0.5) and bundle.std == (0.25, 0.25, 0.25)
    with pytest.raises(DataError, match="data.mean has 1 values but data.in_chans is 3"):
        build_datasets(recipe_for(f"data.root={cifar10_small}", "data.mean=[0.5]").data)
    with pytest.raises(DataError, match="not a folder"):
        build_datasets(recipe_for("data.root=/nonexistent/astro").data)


@pytest.mark.parametrize("crop", ["random_resized_crop", "pad_crop", "resize"])
@pytest.mark.parametrize("auto_augment", [None, "rand-m9-mstd0.5-inc1", "trivialaugment", "augmix-m3-w2-d1"])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_train_transforms(
    crop: str, auto_augment: str | None, in_chans: int, galaxy_sample_dir: Path
) -> None:
    recipe = recipe_for(
        f"data.root={galaxy_sample_dir}",
        "data.img_size=48",
        f"data.in_chans={in_chans}",
        f"augment.crop={crop}",
        f"augment.auto_augment={auto_augment or 'null'}",
        "augment.re_prob=0.5",
        "data.val_fraction=0.2",
    )
    bundle = build_datasets(recipe.data)
    transform = build_train_transform(recipe)
    torch.manual_seed(0)
    out = torch.stack([transform(bundle.train[i][0]) for i in range(4)])
    assert out.shape == (4, in_chans, 48, 48) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.std() > 0.1


def test_eval_transform_resizes_crops_and_normalises() -> None:
    img = Image.new("RGB", (64, 40), (255, 0, 128))
    out = build_eval_transform(32, 0.8, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 3)(img)
    assert out.shape == (3, 32, 32)
    assert out[0].mean().item() == pytest.approx(1.0, abs=1e-3) and out[1].mean().item() == pytest.approx(
        -1.0, abs=1e-3
    )
    gray = build_eval_transform(32, 1.0, "bilinear", (0.5,), (0.25,), 1)(Image.new("L", (32, 32), 255))
    assert gray.shape == (1, 32, 32) and gray.mean().item() == pytest.approx(2.0, abs=1e-3)
