"""Fingerprints of the weights a few short CPU training runs end with: the refactoring check.

A change that should not alter training (a refactor) must leave every fingerprint as it was: run this
before and after, on the same machine and torch, and compare (``--compare before.json``). The runs
cover both data pipelines (``tensor`` and ``loader``) with plain training, and both again with the full
augmentation path (RandAugment, random erasing, Mixup/CutMix, label smoothing, EMA, class weights, the
balanced sampler), on real images: scikit-learn's digits and the Galaxy10 DECaLS sample.

    python benchmarks/weights_fingerprint.py --galaxy ../shared/data/galaxy10-decals-sample \\
        --work /tmp/fingerprints --out before.json
    python benchmarks/weights_fingerprint.py ... --out after.json --compare before.json [--set train.amp=none]

``--set KEY=VALUE ...`` applies to every run: against a version older than 0.5.0 on a CPU with AMX,
``train.amp=none`` compares the full-precision path (0.5.0's auto trains some models in bf16 there).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from safetensors.torch import load_file  # noqa: E402

from astrocli.engine import train  # noqa: E402
from astrocli.recipe import load_recipe  # noqa: E402

PLAIN = ["train.epochs=2", "train.max_steps_per_epoch=6", "train.calibrate=false"]
FULL_AUGMENT = [
    "augment.preset=none",
    "augment.crop=random_resized_crop",
    "augment.auto_augment=rand-m9-mstd0.5-inc1",
    "augment.re_prob=0.25",
    "augment.mixup=0.8",
    "augment.cutmix=1.0",
    "augment.label_smoothing=0.1",
    "augment.vflip=0.5",
    "train.ema=true",
    "train.ema_decay=0.9",
    "train.class_weights=balanced",
    "data.sampler=balanced",
    "train.warmup_epochs=1",
]


def runs(galaxy: Path) -> dict[str, list[str]]:
    """name -> overrides; every run is seeded and on the CPU."""
    galaxy_data = [
        "model.name=cct_2_3x2_32",
        "data.source=imagefolder",
        f"data.root={galaxy}",
        "data.img_size=32",
        "data.val_fraction=0.2",
        "train.batch_size=16",
        "train.epochs=2",
        "train.max_steps_per_epoch=4",
        "train.calibrate=false",
    ]
    named: dict[str, list[str]] = {}
    for pipeline in ("tensor", "loader"):
        named[f"quickstart-{pipeline}"] = ["--recipe=quickstart", *PLAIN, f"data.pipeline={pipeline}"]
        named[f"galaxy-full-augment-{pipeline}"] = [*galaxy_data, *FULL_AUGMENT, f"data.pipeline={pipeline}"]
    return named


def fingerprint(path: Path) -> str:
    """sha256 over every tensor's name and bytes, in name order (the file's metadata is left out)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(load_file(str(path)).items()):
        digest.update(name.encode())
        digest.update(tensor.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def train_one(name: str, overrides: list[str], work: Path, extra: list[str]) -> dict[str, str]:
    recipe_name = None
    keys = []
    for item in overrides:
        if item.startswith("--recipe="):
            recipe_name = item.split("=", 1)[1]
        else:
            keys.append(item)
    keys += [
        "train.device=cpu",
        "data.num_workers=0",
        f"data.cache_dir={work / 'cache'}",
        f"output.dir={work / 'runs'}",
        f"output.name={name}",
        "output.log=quiet",
        "output.plots=false",
        *extra,
    ]
    run_dir = train(load_recipe(recipe_name, keys))
    return {f"{name}/{f.stem}": fingerprint(f) for f in sorted(run_dir.glob("*.safetensors"))}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--galaxy", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/astro-fingerprints"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--compare", type=Path, default=None, help="an earlier --out: say what differs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run (train.amp=none)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prints: dict[str, str] = {}
    for name, overrides in runs(args.galaxy).items():
        prints.update(train_one(name, overrides, args.work, args.set))
    args.out.write_text(json.dumps(prints, indent=2) + "\n")
    for key, value in prints.items():
        print(f"{value[:16]}  {key}")
    if args.compare:
        before = json.loads(args.compare.read_text())
        differ = sorted(k for k in before.keys() | prints.keys() if before.get(k) != prints.get(k))
        print("identical" if not differ else "DIFFERENT: " + ", ".join(differ))
        raise SystemExit(1 if differ else 0)


if __name__ == "__main__":
    main()
