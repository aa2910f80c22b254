"""The tensor pipeline: cache, batch sources, and the statistics of its batched augmentations.

The reference is always timm's own per-sample code (parameter samplers, PIL ops, create_transform),
run side by side on the same real CIFAR-10 / Galaxy10 images.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import class_dirs
from PIL import Image
from timm.data import create_transform
from timm.data.auto_augment import LEVEL_TO_ARG, NAME_TO_OP
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import RandomResizedCropAndInterpolation

from astrocli.data import rand_augment
from astrocli.data import tensor_cache as tc
from astrocli.data import tensor_pipeline as tp
from astrocli.data.base import ArrayImageDataset, ImageFileDataset, NumpyStore
from astrocli.data.batches import BatchSource
from astrocli.data.tensor_crop import crop_resize, sample_rrc_boxes
from astrocli.data.tensor_erase import box_mask, random_erase, sample_erase_boxes
from astrocli.errors import AstroError, RecipeError
from astrocli.recipe import load_recipe

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def folder_dataset(root: Path) -> ImageFileDataset:
    classes = [p.name for p in class_dirs(root)]
    samples = [(str(f), i) for i, c in enumerate(classes) for f in sorted((root / c).glob("*.jpg"))]
    return ImageFileDataset(samples)


def recipe_for(tmp_path: Path, *overrides: str):
    base = [f"data.root={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}", "augment.hflip=0.0"]
    return load_recipe(None, base + list(overrides))


@pytest.fixture(scope="module")
def cifar_train(cifar10_small: Path) -> ImageFileDataset:
    return folder_dataset(cifar10_small / "train")


@pytest.fixture(scope="module")
def cifar_cache(cifar_train, tmp_path_factory) -> tc.TensorCache:
    cfg = load_recipe(None, [f"data.cache_dir={tmp_path_factory.mktemp('c')}"]).data
    return tc.build_tensor_cache(cifar_train, cfg, "train")


def pil_images(cache: tc.TensorCache) -> list[Image.Image]:
    return [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in cache.images]


# ------------------------------------------------------------------------------------------------
# Cache
# ------------------------------------------------------------------------------------------------


def test_cache_decodes_once_and_reloads_by_content(cifar_train, tmp_path, monkeypatch):
    cfg = recipe_for(tmp_path).data
    cache = tc.build_tensor_cache(cifar_train, cfg, "train")
    assert cache.images.shape == (200, 3, 32, 32) and cache.images.dtype == torch.uint8
    assert cache.labels.tolist() == cifar_train.targets
    first, _ = cifar_train[7]
    assert torch.equal(cache.images[7], torch.from_numpy(np.array(first)).permute(2, 0, 1))
    assert cache.path is not None and cache.path.is_file()

    def no_decoding(*_args):
        raise AssertionError("the second run must load the cache, not decode")

    monkeypatch.setattr(tc, "_decode_all", no_decoding)
    again = tc.build_tensor_cache(cifar_train, cfg, "train")
    assert again.key == cache.key and torch.equal(again.images, cache.images)
    monkeypatch.undo()

    # A changed file is a different content key.
    path = Path(cifar_train.samples[0][0])
    stat = path.stat()
    try:
        import os

        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        assert tc.cache_path(cifar_train, cfg, "train")[0] != cache.key
    finally:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_cache_of_mixed_sizes_is_resized_and_arrays_are_taken_as_is(galaxy_sample_dir, tmp_path):
    files = sorted(galaxy_sample_dir.glob("*/*.jpg"))[:3]
    odd = tmp_path / "odd.png"
    Image.open(files[0]).resize((120, 90)).save(odd)
    dataset = ImageFileDataset([(str(files[1]), 0), (str(odd), 1), (str(files[2]), 2)])
    cfg = recipe_for(tmp_path, "data.img_size=64", "data.crop_pct=0.875").data
    cache = tc.build_tensor_cache(dataset, cfg, "train")
    side = tc.stored_size(64, 0.875)
    assert cache.images.shape == (3, 3, side, side) and side == 73

    array = np.stack([np.asarray(Image.open(f)) for f in files])
    arrays = ArrayImageDataset(NumpyStore(array), [2, 0], [5, 6])
    from_array = tc.build_tensor_cache(arrays, cfg, "train")
    assert from_array.path is None
    assert torch.equal(from_array.images, torch.from_numpy(array[[2, 0]]).permute(0, 3, 1, 2))
    assert from_array.labels.tolist() == [5, 6]


def test_fits_in_memory_compares_with_free_memory(cifar_train, tmp_path, monkeypatch):
    recipe = recipe_for(tmp_path)
    assert tc.estimated_cache_bytes(cifar_train, recipe.data) == 200 * 3 * 32 * 32
    assert tc.fits_in_memory(cifar_train, recipe, "cpu")
    monkeypatch.setattr(tc, "free_memory_bytes", lambda device: 2 * 200 * 3 * 32 * 32 - 1)
    assert not tc.fits_in_memory(cifar_train, recipe, "cpu")


# ------------------------------------------------------------------------------------------------
# Crop, flip, erase: parameter distributions against timm's samplers
# ------------------------------------------------------------------------------------------------


def test_random_resized_crop_boxes_match_timm_distribution():
    n, scale, ratio = 20000, (0.08, 1.0), (3 / 4, 4 / 3)
    ours = sample_rrc_boxes(torch.Generator().manual_seed(0), n, 32, 32, scale, ratio).double()
    random.seed(0)
    img = Image.new("RGB", (32, 32))
    theirs = torch.tensor(
        [RandomResizedCropAndInterpolation.get_params(img, scale, ratio) for _ in range(n)],
        dtype=torch.float64,
    )
    for boxes in (ours, theirs):
        assert (boxes[:, 0] + boxes[:, 2] <= 32).all() and (boxes[:, 1] + boxes[:, 3] <= 32).all()
    area = lambda b: b[:, 2] * b[:, 3] / 1024  # noqa: E731
    log_aspect = lambda b: torch.log(b[:, 3] / b[:, 2])  # noqa: E731
    qs = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
    assert torch.allclose(torch.quantile(area(ours), qs), torch.quantile(area(theirs), qs), atol=0.03)
    assert abs(area(ours).mean() - area(theirs).mean()) < 0.01
    assert abs(log_aspect(ours).std() - log_aspect(theirs).std()) < 0.01
    assert abs((ours[:, 0] + ours[:, 2] / 2).mean() - (theirs[:, 0] + theirs[:, 2] / 2).mean()) < 0.15


def test_crop_resize_matches_pil_resized_crop(cifar_cache, galaxy_sample_dir):
    import torchvision.transforms.functional as TVF
    from torchvision.transforms import InterpolationMode

    small = Image.fromarray(cifar_cache.images[3].permute(1, 2, 0).numpy())
    big = Image.open(sorted(galaxy_sample_dir.glob("*/*.jpg"))[0]).convert("RGB")
    for img, box, out in [(small, (3, 5, 20, 14), 32), (big, (10, 20, 200, 150), 64)]:
        x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None]
        for mode in ("bicubic", "bilinear"):
            ref = np.asarray(TVF.resized_crop(img, *box, [out, out], InterpolationMode(mode))).astype(float)
            ours = crop_resize(x, torch.tensor([box]), out, mode).round().clamp(0, 255)
            diff = np.abs(ours[0].permute(1, 2, 0).numpy() - ref)
            assert diff.max() <= 2.0 and diff.mean() < 0.3  # PIL rounds to uint8 between its two passes


def test_flip_rates(tmp_path):
    n = 4000
    images = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)
    images[:, 0, :, 4:] = 255  # channel 0: dark left half
    images[:, 1, 4:, :] = 255  # channel 1: dark top half
    cache = tc.TensorCache(images, torch.zeros(n, dtype=torch.int64))
    recipe = recipe_for(
        tmp_path,
        "data.img_size=8",
        "augment.crop=resize",
        "augment.hflip=0.5",
        "augment.vflip=0.2",
        f"train.batch_size={n}",
    )
    ((x, _),) = list(tp.TensorTrainBatches(cache, recipe, "cpu", mean=(0.5,) * 3, std=(0.5,) * 3))
    hflipped = (x[:, 0, 0, 0] > x[:, 0, 0, -1]).double().mean()
    vflipped = (x[:, 1, 0, 0] > x[:, 1, -1, 0]).double().mean()
    assert abs(hflipped - 0.5) < 0.03 and abs(vflipped - 0.2) < 0.03


def test_random_erasing_matches_timm_rate_and_area():
    n, h, w, prob = 3000, 32, 32, 0.4
    boxes = sample_erase_boxes(torch.Generator().manual_seed(1), n, h, w, prob)
    ours = box_mask(boxes, h, w, torch.device("cpu")).double().mean(dim=(1, 2, 3))
    random.seed(1)
    eraser = RandomErasing(prob, mode="const", device="cpu")
    theirs = torch.stack([(eraser(torch.ones(3, h, w)) == 0).double().mean() for _ in range(n)])
    assert abs((ours > 0).double().mean() - (theirs > 0).double().mean()) < 0.03
    assert abs((ours > 0).double().mean() - prob) < 0.03
    erased_ours, erased_theirs = ours[ours > 0], theirs[theirs > 0]
    assert erased_ours.min() >= 0.015 and erased_ours.max() <= 1 / 3 + 0.02
    qs = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    assert torch.allclose(torch.quantile(erased_ours, qs), torch.quantile(erased_theirs, qs), atol=0.025)
    # pixel mode fills with standard normal noise
    x = random_erase(torch.zeros(n, 3, h, w), box_mask(boxes, h, w, torch.device("cpu")), "pixel")
    noise = x[x != 0]
    assert abs(noise.mean()) < 0.01 and abs(noise.std() - 1) < 0.01


# ------------------------------------------------------------------------------------------------
# RandAugment: op choice, magnitudes, and each op against timm's PIL op on real images
# ------------------------------------------------------------------------------------------------


def test_randaugment_op_choice_and_magnitude_distribution():
    ra = rand_augment.BatchRandAugment("rand-m9-mstd0.5-inc1", 32, CIFAR_MEAN, "bicubic")
    assert ra.num_layers == 2 and len(ra.names) == 15 and "Cutout" not in ra.names
    gen = torch.Generator().manual_seed(0)
    ops = ra.sample_ops(gen, 30000)
    assert abs((ops < 0).double().mean() - 0.5) < 0.01  # each layer applies with timm's p=0.5
    freq = torch.bincount(ops[ops >= 0], minlength=15).double() / (ops >= 0).sum()
    assert (freq - 1 / 15).abs().max() < 0.01
    levels = ra.sample_levels(gen, 30000)
    assert abs(levels.mean() - 9) < 0.02 and abs(levels.std() - 0.5) < 0.02 and levels.max() <= 10
    uniform = rand_augment.BatchRandAugment("trivialaugment", 32, CIFAR_MEAN, "bicubic")
    assert uniform.num_layers == 1 and uniform.prob == 1.0
    u = uniform.sample_levels(gen, 30000)
    assert abs(u.mean() - 5) < 0.1 and u.min() >= 0 and u.max() <= 10


def test_op_arguments_match_timm_level_to_arg():
    """The vectorised level -> argument table against timm's LEVEL_TO_ARG, op by op."""
    ra = rand_augment.BatchRandAugment("rand-m9-mstd0.5-inc1", 32, CIFAR_MEAN, "bicubic")
    hparams = {"translate_pct": 0.45}
    levels = torch.tensor([0.0, 2.5, 5.0, 7.3, 9.0, 10.0]).repeat(400)
    signs = []
    for index, name in enumerate(ra.names):
        ops = torch.full((len(levels),), index)
        ours = rand_augment.op_arguments(ra.names, ops, levels, torch.Generator().manual_seed(index), 0.45)
        fn = LEVEL_TO_ARG[name]
        theirs = torch.tensor(
            [fn(float(v), hparams)[0] if fn else float(v) for v in levels], dtype=torch.float64
        )
        enhance_increasing = name.endswith("Increasing") and not name.startswith(("Posterize", "Solarize"))
        if rand_augment.OPS[name].geometric or enhance_increasing:  # timm negates these half the time
            centre = 1.0 if name.endswith("Increasing") else 0.0  # timm negates v, then adds 1
            assert torch.allclose((ours - centre).abs(), (theirs - centre).abs(), atol=1e-9), name
            signs.append(((ours - centre) < 0)[levels > 0].double().mean())
        else:
            assert torch.allclose(ours, theirs, atol=1e-9), name
    assert all(abs(rate - 0.5) < 0.05 for rate in signs) and len(signs) == 9


def test_every_op_of_the_table_maps_levels_as_timm():
    """Each row of the op table (also those outside the default op sets) against timm's
    LEVEL_TO_ARG: the same magnitude, and randomly negated exactly where timm negates."""
    names = list(rand_augment.OPS)
    levels = torch.tensor([0.5, 2.5, 5.0, 7.3, 9.0, 10.0]).repeat(50)
    random.seed(0)
    for index, name in enumerate(names):
        assert name in NAME_TO_OP, name
        ops = torch.full((len(levels),), index)
        ours = rand_augment.op_arguments(names, ops, levels, torch.Generator().manual_seed(index), 0.45)
        fn = LEVEL_TO_ARG[name]
        theirs = torch.tensor([fn(float(v), {"translate_pct": 0.45})[0] if fn else float(v) for v in levels])
        enhance_increasing = name.endswith("Increasing") and not name.startswith(("Posterize", "Solarize"))
        centre = 1.0 if enhance_increasing else 0.0
        assert torch.allclose((ours - centre).abs(), (theirs.double() - centre).abs(), atol=1e-6), name
        assert bool((ours < centre).any()) == bool((theirs < centre).any()), name


@pytest.mark.parametrize(
    ("name", "arg", "tolerance"),
    [
        ("AutoContrast", None, 0.5),
        ("Equalize", None, 0.5),
        ("Invert", None, 0.0),
        ("PosterizeIncreasing", 2, 0.0),
        ("SolarizeIncreasing", 100, 0.0),
        ("SolarizeAdd", 60, 0.0),
        ("ColorIncreasing", 1.6, 0.6),
        ("ContrastIncreasing", 0.4, 0.6),
        ("BrightnessIncreasing", 1.5, 0.6),
        ("SharpnessIncreasing", 1.8, 0.6),
        ("Rotate", 20.0, 6.0),
        # shear/translate resample lines with PIL's own rules (a = -1 cubic, edge taps, fill):
        # every pixel within 1 grey level of PIL's, about 0.4 on average
        ("ShearX", 0.25, 0.6),
        ("ShearY", -0.25, 0.6),
        ("TranslateXRel", 0.3, 0.6),
        ("TranslateYRel", -0.3, 0.6),
    ],
)
def test_each_randaugment_op_matches_timm_pil_op(cifar_cache, name, arg, tolerance):
    """Mean absolute difference in grey levels (0..255) against timm's PIL op with the same argument."""
    images = cifar_cache.images[:40]
    fill = tuple(round(255 * m) for m in CIFAR_MEAN)
    args = torch.full((len(images),), float(arg if arg is not None else 0))
    fill_levels = torch.tensor(fill, dtype=torch.float32)
    ours = rand_augment.OPS[name].apply(images.float(), args, fill=fill_levels, mode="bicubic")
    ours = ours.round().clamp(0, 255)
    pil_arg = () if arg is None else (arg * 32 if name.startswith("Translate") else arg,)
    if name.startswith("Translate"):
        pil_fn = NAME_TO_OP["TranslateX" if "X" in name else "TranslateY"]  # absolute pixels
    else:
        pil_fn = NAME_TO_OP[name]
    theirs = [
        np.asarray(pil_fn(img, *pil_arg, fillcolor=fill, resample=Image.BICUBIC))
        for img in pil_images(cifar_cache)[:40]
    ]
    theirs = torch.from_numpy(np.stack(theirs)).permute(0, 3, 1, 2).double()
    assert (ours.double() - theirs).abs().mean() <= tolerance


# ------------------------------------------------------------------------------------------------
# Whole pipeline: normalisation and equivalence in distribution with timm's create_transform
# ------------------------------------------------------------------------------------------------


def test_normalised_batches_have_the_dataset_statistics(cifar_cache, tmp_path):
    pixels = cifar_cache.images.double() / 255
    mean = pixels.mean(dim=(0, 2, 3)).tolist()
    std = pixels.std(dim=(0, 2, 3)).tolist()
    recipe = recipe_for(tmp_path, "train.batch_size=64")
    batches = list(tp.TensorEvalBatches(cifar_cache, recipe, "cpu", mean=mean, std=std))
    assert [len(x) for x, _ in batches] == [64, 64, 64, 8]  # no drop
    x = torch.cat([b for b, _ in batches])
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)
    assert torch.equal(torch.cat([t for _, t in batches]), cifar_cache.labels)


def test_eval_resize_centre_crop_matches_timm(galaxy_sample_dir, tmp_path):
    files = sorted(galaxy_sample_dir.glob("*/*.jpg"))[:8]
    dataset = ImageFileDataset([(str(f), i) for i, f in enumerate(files)])
    recipe = recipe_for(tmp_path, "data.img_size=64", "data.crop_pct=0.875", "train.batch_size=8")
    cache = tc.build_tensor_cache(dataset, recipe.data, "val")
    ((ours, _),) = list(tp.TensorEvalBatches(cache, recipe, "cpu", mean=CIFAR_MEAN, std=CIFAR_STD))
    timm_eval = create_transform(
        64, is_training=False, crop_pct=0.875, interpolation="bicubic", mean=CIFAR_MEAN, std=CIFAR_STD
    )
    theirs = torch.stack([timm_eval(dataset[i][0]) for i in range(len(dataset))])
    assert ours.shape == theirs.shape == (8, 3, 64, 64)
    assert (ours - theirs).abs().mean() < 0.02  # ~1 grey level in normalised units


def _moments(x: torch.Tensor) -> torch.Tensor:
    """Per-channel mean and std, and the pooled skewness and 10/50/90% quantiles."""
    flat = x.double().transpose(0, 1).reshape(x.shape[1], -1)
    pooled = flat.flatten()
    skew = ((pooled - pooled.mean()) ** 3).mean() / pooled.std() ** 3
    quantiles = torch.quantile(
        pooled[:: max(1, len(pooled) // 200000)], torch.tensor([0.1, 0.5, 0.9]).double()
    )
    return torch.cat([flat.mean(1), flat.std(1), skew.view(1), quantiles])


@pytest.mark.parametrize(
    "auto_augment", [None, "rand-m9-mstd0.5-inc1"], ids=["crop-flip-erase", "randaugment"]
)
def test_augmented_batches_match_timm_create_transform_in_distribution(cifar_cache, tmp_path, auto_augment):
    epochs = 4
    overrides = [
        "augment.hflip=0.5",
        "augment.re_prob=0.25",
        "train.batch_size=200",
        "data.interpolation=bicubic",
    ]
    # timm uses colour jitter only without auto_augment (and create_transform defaults it to 0.4)
    color_jitter = None if auto_augment else 0.4
    overrides.append(f"augment.auto_augment={auto_augment}" if auto_augment else "augment.color_jitter=0.4")
    recipe = recipe_for(tmp_path, *overrides)
    source = tp.TensorTrainBatches(cifar_cache, recipe, "cpu", mean=CIFAR_MEAN, std=CIFAR_STD)
    ours = []
    for epoch in range(epochs):
        source.set_epoch(epoch)
        ours += [x for x, _ in source]
    timm_train = create_transform(
        32,
        is_training=True,
        scale=(0.08, 1.0),
        hflip=0.5,
        auto_augment=auto_augment,
        color_jitter=color_jitter,
        interpolation="bicubic",
        re_prob=0.25,
        re_mode="pixel",
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
    )
    random.seed(0)
    torch.manual_seed(0)
    np.random.seed(0)
    images = pil_images(cifar_cache)
    theirs = torch.stack([timm_train(img) for _ in range(epochs) for img in images])
    a, b = _moments(torch.cat(ours)), _moments(theirs)
    # 800 augmented images each: sampling noise of the per-channel means is about 0.02
    assert (a[:3] - b[:3]).abs().max() < 0.06, (a, b)
    assert ((a[3:6] - b[3:6]) / b[3:6]).abs().max() < 0.05, (a, b)
    assert (a[6:] - b[6:]).abs().max() < 0.12, (a, b)


# ------------------------------------------------------------------------------------------------
# Mixup, determinism, sharding, errors
# ------------------------------------------------------------------------------------------------


def _tiny_cache(n: int = 64) -> tc.TensorCache:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 8, 8), generator=gen, dtype=torch.uint8)
    return tc.TensorCache(images, torch.arange(n) % 4)


@pytest.fixture
def single_thread():
    """Many tiny batches: one thread avoids OpenMP hand-offs that dominate on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_mixup_lambda_statistics_and_off_epoch(tmp_path, single_thread):
    alpha = 0.8
    recipe = recipe_for(
        tmp_path,
        "data.img_size=8",
        "augment.crop=resize",
        f"augment.mixup={alpha}",
        "augment.mixup_off_epoch=150",
        "train.batch_size=32",
    )
    source = tp.TensorTrainBatches(
        _tiny_cache(), recipe, "cpu", num_classes=4, mean=(0.5,) * 3, std=(0.5,) * 3
    )
    lams = []
    for epoch in range(150):
        source.set_epoch(epoch)
        for _, targets in source:
            assert targets.shape == (32, 4) and torch.allclose(targets.sum(1), torch.ones(32))
            lams.append(targets.max(dim=1).values.min().item())  # max(lam, 1 - lam) of the batch
    lams = torch.tensor(lams, dtype=torch.float64)
    # lam ~ Beta(a, a); m = max(lam, 1 - lam) has mean 1/2 + E|lam - 1/2|
    reference = np.random.default_rng(0).beta(alpha, alpha, 200000)
    expected = np.maximum(reference, 1 - reference)
    assert abs(lams.mean().item() - expected.mean()) < 0.02
    assert abs(lams.std().item() - expected.std()) < 0.02
    source.set_epoch(150)
    for _, targets in source:  # after mixup_off_epoch: unmixed pixels, one-hot soft targets
        assert targets.max(dim=1).values.eq(1).all()


def test_seeded_determinism_and_rank_sharding(tmp_path):
    recipe = recipe_for(
        tmp_path,
        "data.img_size=8",
        "augment.hflip=0.5",
        "augment.auto_augment=rand-m9-mstd0.5-inc1",
        "augment.re_prob=0.5",
        "augment.cutmix=1.0",
        "train.batch_size=8",
    )
    cache = _tiny_cache(66)

    def epoch_of(rank: int, world: int, epoch: int, seed: int = 0):
        r = load_recipe(None, [f"train.seed={seed}"])
        recipe.train.seed = r.train.seed
        source = tp.TensorTrainBatches(
            cache, recipe, "cpu", mean=(0.5,) * 3, std=(0.5,) * 3, rank=rank, world_size=world, num_classes=4
        )
        source.set_epoch(epoch)
        return source, list(source)

    source, a = epoch_of(0, 1, 3)
    _, b = epoch_of(0, 1, 3)
    _, c = epoch_of(0, 1, 4)
    assert len(source) == 8 and source.num_samples == 64  # drop_last
    assert all(torch.equal(x1, x2) and torch.equal(t1, t2) for (x1, t1), (x2, t2) in zip(a, b, strict=True))
    assert not torch.equal(a[0][0], c[0][0])
    r0, _ = epoch_of(0, 2, 1)
    r1, _ = epoch_of(1, 2, 1)
    shard0, shard1 = set(r0.epoch_indices().tolist()), set(r1.epoch_indices().tolist())
    assert len(shard0) == len(shard1) == 32 and not shard0 & shard1


def test_bad_settings_are_one_line_errors(tmp_path):
    cache, stats = _tiny_cache(16), {"mean": (0.5,) * 3, "std": (0.5,) * 3}
    with pytest.raises(AstroError, match="batch_size"):
        tp.TensorTrainBatches(cache, recipe_for(tmp_path, "train.batch_size=32"), "cpu", **stats)
    with pytest.raises(RecipeError, match="data.pipeline=loader"):
        tp.TensorTrainBatches(
            cache,
            recipe_for(tmp_path, "augment.auto_augment=augmix-m5", "train.batch_size=4"),
            "cpu",
            **stats,
        )
    with pytest.raises(RecipeError, match="even"):
        tp.TensorTrainBatches(
            cache, recipe_for(tmp_path, "augment.mixup=0.8", "train.batch_size=5"), "cpu", **stats
        )


def test_sources_are_batch_sources_with_the_callers_statistics(tmp_path):
    cache, stats = _tiny_cache(16), {"mean": (0.5,) * 3, "std": (0.5,) * 3}
    recipe = recipe_for(tmp_path, "data.img_size=8", "train.batch_size=4")
    train = tp.TensorTrainBatches(cache, recipe, "cpu", **stats)
    evaluation = tp.TensorEvalBatches(cache, recipe, "cpu", **stats)
    assert isinstance(train, BatchSource) and isinstance(evaluation, BatchSource)
    assert evaluation.mixup is None
    evaluation.set_epoch(3, skip_batches=2)  # evaluation ignores both
    assert len(list(evaluation)) == len(evaluation) == 4
    train.set_epoch(0, skip_batches=1)
    assert len(list(train)) == 3 and len(list(train)) == 4  # the skip applies to one iteration
    with pytest.raises(ValueError, match="mean/std"):
        tp.TensorEvalBatches(cache, recipe, "cpu", mean=None, std=None)


def test_tensor_batches_factory_builds_both_sources(cifar_train, tmp_path):
    recipe = recipe_for(
        tmp_path,
        "train.batch_size=50",
        "augment.auto_augment=rand-m9-mstd0.5-inc1",
        "augment.mixup=0.8",
        "augment.cutmix=1.0",
        "train.channels_last=true",
    )
    train = tp.TensorBatches(cifar_train, recipe, "cpu", train=True, mean=CIFAR_MEAN, std=CIFAR_STD)
    x, y = next(iter(train))
    assert (
        x.shape == (50, 3, 32, 32)
        and y.shape == (50, 10)
        and x.is_contiguous(memory_format=torch.channels_last)
    )
    assert math.isfinite(x.sum().item())
    val = tp.TensorBatches(cifar_train, recipe, "cpu", train=False, mean=CIFAR_MEAN, std=CIFAR_STD)
    assert len(val) == 4 and val.num_samples == 200 and next(iter(val))[1].dtype == torch.int64
