"""Data-driven defaults against a hand-set grid, and class weights on imbalanced data.

For each data set, a recipe that names only the model, the data and the epochs (``augment.preset:
auto`` fills the rest) is trained next to a small grid of hand-set augmentation and learning-rate
choices (``augment.preset: none``, same model, same epochs, same warmup), and every final model is
scored on the balanced test images this script sets aside (top-1 and scikit-learn's balanced
accuracy, computed here from the predictions; digits, which has no test split, on its stratified
validation split). Selection plays no part: each run's last checkpoint is scored. Then, on a
CIFAR-10 subset with five classes cut to a tenth, the auto recipe is trained plain, with
``train.class_weights=balanced`` and with ``data.sampler=balanced``.

Data (all real): a stratified 5,000-image subset of the CIFAR-10 JPEG copy (500 per class, held-out
100 per class from its test split) at 32 px; scikit-learn's digits at their native 8 px
(stratified 10% held-out); the 100-galaxy Galaxy10 DECaLS sample at 64 px (smoke: 20 held-out images).

    python benchmarks/defaults.py --cifar-zip ../shared/data/cifar10-jpeg.zip \\
        --galaxy ../shared/data/galaxy10-decals-sample --work /tmp/astro-defaults-bench \\
        --out /tmp/astro-defaults-bench/results.json
    python benchmarks/defaults.py ... --quick   # 1 epoch each: checks the script runs
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from astrocli.engine import train  # noqa: E402
from astrocli.inference.evaluate import collect_probabilities, eval_recipe  # noqa: E402
from astrocli.inference.runner import load_runner  # noqa: E402
from astrocli.recipe import load_recipe  # noqa: E402

MODEL = "resnet20"  # --model: any zoo name (the user trained cct_2_3x2_32)
# (name, augmentation keys, lr): the hand-set grid; same model, epochs, batch and warmup as auto.
GRID = [
    ("timm defaults (RRC 0.08-1, hflip), lr 5e-4", {"crop": "random_resized_crop", "hflip": 0.5}, 5e-4),
    ("pad-crop img/8, hflip, lr 5e-4", {"crop": "pad_crop", "hflip": 0.5}, 5e-4),
    ("pad-crop img/8, hflip, lr 1e-3", {"crop": "pad_crop", "hflip": 0.5}, 1e-3),
    ("pad-crop img/8, hflip, lr 2e-3", {"crop": "pad_crop", "hflip": 0.5}, 2e-3),
    ("pad-crop img/8, hflip, lr 4e-3", {"crop": "pad_crop", "hflip": 0.5}, 4e-3),
    ("pad-crop img/8, no flip, lr 2e-3", {"crop": "pad_crop", "hflip": 0.0}, 2e-3),
]
GRID_PICK: set[int] | None = None  # --grid 0,2: only these grid rows
CUT_CLASSES = (5, 6, 7, 8, 9)  # imbalanced subset: these keep a tenth of their images


def cifar_subset(zip_path: Path, dest: Path, per_class: int, heldout: int, cut: float = 1.0) -> Path:
    """``dest/train/<class>/`` with ``per_class`` images (``cut`` of that for CUT_CLASSES) and
    ``dest/test/<class>/`` with ``heldout``, chosen with a fixed seed from the JPEG zip."""
    if (dest / "done").is_file():
        return dest
    rng = random.Random(0)
    with zipfile.ZipFile(zip_path) as archive:
        names = [n for n in archive.namelist() if n.endswith(".jpg")]
        classes = sorted({n.split("/")[1] for n in names})
        for split, count in (("train", per_class), ("test", heldout)):
            for index, cls in enumerate(classes):
                members = sorted(n for n in names if n.startswith(f"{split}/{cls}/"))
                keep = count if split == "test" or index not in CUT_CLASSES else int(count * cut)
                for name in rng.sample(members, keep):
                    target = dest / split / cls / Path(name).name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(archive.read(name))
    (dest / "done").write_text("ok\n")
    return dest


def digits_folder(dest: Path, cut: float = 1.0, heldout: float = 0.3) -> Path:
    """scikit-learn's digits as an 8-px grayscale image folder: ``train/`` (CUT_CLASSES keep ``cut``
    of their images) and a stratified, balanced ``test/`` (``heldout`` of each class)."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if (dest / "done").is_file():
        return dest
    digits = load_digits()
    pixels = np.clip(np.round(digits.images * (255.0 / 16)), 0, 255).astype(np.uint8)
    train_idx, test_idx = train_test_split(
        np.arange(len(pixels)), test_size=heldout, random_state=0, stratify=digits.target
    )
    rng = np.random.default_rng(0)
    for split, indices in (("train", train_idx), ("test", test_idx)):
        for c in range(10):
            members = [i for i in indices if digits.target[i] == c]
            if split == "train" and c in CUT_CLASSES:
                members = list(rng.choice(members, max(1, int(len(members) * cut)), replace=False))
            for i in members:
                target = dest / split / str(c) / f"{i:04d}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels[i], mode="L").save(target)
    (dest / "done").write_text("ok\n")
    return dest


def run(name: str, overrides: list[str], work: Path) -> dict:
    """Train one recipe, then score its final model on the test split (the balanced held-out images
    this script wrote), or on the validation split where the source has no test split (digits)."""
    from sklearn.metrics import balanced_accuracy_score

    from astrocli.data import build_datasets

    start = time.perf_counter()
    run_dir = train(load_recipe(None, overrides))
    seconds = time.perf_counter() - start
    runner = load_runner(run_dir / "last.safetensors", device="cpu")
    recipe = eval_recipe(runner.meta)
    bundle = build_datasets(recipe.data)
    scored = bundle.test if bundle.test is not None else bundle.val
    log_probs, targets = collect_probabilities(runner, scored, batch_size=256)
    preds = log_probs.argmax(axis=1)
    resolved = runner.meta.recipe
    return {
        "name": name,
        "top1": float((preds == targets).mean() * 100),
        "balanced_accuracy": float(balanced_accuracy_score(targets, preds) * 100),
        "scored_on": "test" if bundle.test is not None else "val",
        "scored_images": int(len(targets)),
        "seconds": seconds,
        "crop": resolved["augment"]["crop"],
        "hflip": resolved["augment"]["hflip"],
        "vflip": resolved["augment"]["vflip"],
        "lr": resolved["train"]["lr"],
        "batch_size": resolved["train"]["batch_size"],
        "warmup_epochs": resolved["train"]["warmup_epochs"],
        "run_dir": str(run_dir),
    }


def plumbing(work: Path, name: str) -> list[str]:
    """Keys that are not training choices: where, how quietly, on what."""
    return [
        "data.num_workers=0",
        "data.pipeline=tensor",
        f"data.cache_dir={work / 'cache'}",  # never beside the (shared, read-only) data
        "train.device=cpu",
        "train.calibrate=false",
        f"output.dir={work / 'runs'}",
        f"output.name={name}",
        "output.log=quiet",
        "output.plots=false",
    ]


def compare(label: str, data: list[str], img_size: int, epochs: int, work: Path) -> list[dict]:
    """The auto recipe and the grid on one data set (the grid gets auto's warmup rule)."""
    from astrocli.data.defaults import auto_warmup

    base = [f"model.name={MODEL}", *data, f"data.img_size={img_size}", f"train.epochs={epochs}"]
    results = [run("auto (model, data, epochs only)", [*base, *plumbing(work, f"{label}-auto")], work)]
    for i, (name, augment, lr) in enumerate(GRID):
        if GRID_PICK is not None and i not in GRID_PICK:
            continue
        keys = [f"augment.{k}={json.dumps(v)}" for k, v in augment.items()]
        keys += ["augment.preset=none", f"augment.padding={max(1, img_size // 8)}", f"train.lr={lr}"]
        keys.append(f"train.warmup_epochs={auto_warmup(epochs)}")
        keys.append(f"train.batch_size={results[0]['batch_size']}")  # as auto chose for this data
        results.append(run(name, [*base, *keys, *plumbing(work, f"{label}-grid{i}")], work))
    for r in results:
        print(
            f"{label}: {r['name']}: top-1 {r['top1']:.2f}%  balanced {r['balanced_accuracy']:.2f}%  "
            f"({r['seconds']:.0f} s)",
            flush=True,
        )
    return results


def imbalance(label: str, data: list[str], epochs: int, work: Path, sampler: bool) -> list[dict]:
    """The auto recipe plain, with balanced class weights (and with the balanced sampler)."""
    base = [f"model.name={MODEL}", *data, f"train.epochs={epochs}"]
    variants = [("unweighted", []), ("class_weights=balanced", ["train.class_weights=balanced"])]
    if sampler:
        variants.append(("sampler=balanced", ["data.sampler=balanced"]))
    results = []
    for name, extra in variants:
        tag = name.split("=")[0]
        result = run(name, [*base, *extra, *plumbing(work, f"{label}-imbalanced-{tag}")], work)
        results.append(result)
        top1, balanced = result["top1"], result["balanced_accuracy"]
        print(f"{label} imbalanced: {name}: top-1 {top1:.2f}%  balanced {balanced:.2f}%", flush=True)
    return results


def main() -> None:
    global GRID_PICK, MODEL
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cifar-zip", type=Path, required=True)
    parser.add_argument("--galaxy", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/astro-defaults-bench"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--cifar-epochs", type=int, default=3)
    parser.add_argument("--digits-epochs", type=int, default=8)
    parser.add_argument("--galaxy-epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--digits-size", type=int, default=8, help="digits' img_size (native: 8)")
    parser.add_argument(
        "--sections",
        default="digits,digits-imbalanced,cifar,cifar-imbalanced,galaxy",
        help="comma-separated: digits, digits-imbalanced, cifar, cifar-imbalanced, galaxy",
    )
    parser.add_argument("--sampler", action="store_true", help="also the balanced sampler (imbalanced)")
    parser.add_argument("--quick", action="store_true", help="1 epoch each (checks the script runs)")
    parser.add_argument("--model", default=MODEL, help="the model every run trains (default: resnet20)")
    parser.add_argument("--grid", default=None, help="comma-separated grid rows to run (default: all)")
    args = parser.parse_args()
    MODEL = args.model
    GRID_PICK = {int(i) for i in args.grid.split(",")} if args.grid else None
    torch.set_num_threads(args.threads)
    work = args.work
    if args.quick:
        args.cifar_epochs = args.digits_epochs = args.galaxy_epochs = 1
        work = work / "quick"

    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}",
        "model": MODEL,
        "command": " ".join(sys.argv),
    }

    def save() -> None:  # after every section, so a cut-short run still leaves its figures
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")

    sections = args.sections.split(",")
    for section in sections:
        if section == "digits":
            data = ["data.source=digits", "data.in_chans=1"]
            results["digits"] = compare("digits", data, args.digits_size, args.digits_epochs, work)
        elif section == "digits-imbalanced":
            root = digits_folder(work / "digits-imbalanced", cut=0.1)
            data = ["data.source=imagefolder", f"data.root={root}", "data.in_chans=1", "data.img_size=8"]
            results["digits_imbalanced"] = imbalance("digits", data, args.digits_epochs, work, args.sampler)
        elif section == "cifar":
            cifar = cifar_subset(args.cifar_zip, work / "cifar5k", 500, 100)
            cifar_data = ["data.source=imagefolder", f"data.root={cifar}"]
            results["cifar10_5k"] = compare("cifar10-5k", cifar_data, 32, args.cifar_epochs, work)
        elif section == "cifar-imbalanced":
            root = cifar_subset(args.cifar_zip, work / "cifar-imbalanced", 500, 100, cut=0.1)
            data = ["data.source=imagefolder", f"data.root={root}", "data.img_size=32"]
            results["cifar10_imbalanced"] = imbalance("cifar", data, args.cifar_epochs, work, args.sampler)
        elif section == "galaxy":
            galaxy = ["data.source=imagefolder", f"data.root={args.galaxy}", "data.val_fraction=0.2"]
            results["galaxy_sample"] = compare("galaxy", galaxy, 64, args.galaxy_epochs, work)
        else:
            raise SystemExit(f"unknown section {section}")
        save()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    np.random.seed(0)
    main()
