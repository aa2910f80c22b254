"""``astro eval CKPT --calibrate``: fit the temperature of an existing checkpoint on the validation
split of its recipe and rewrite the checkpoint in place (atomically; only the metadata changes), so
``astro predict`` and a later ``astro export`` use it. The fit itself is :mod:`astrocli.calibration`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from astrocli.calibration import calibrate_logits, write_temperature
from astrocli.errors import AstroError
from astrocli.inference.evaluate import collect_outputs, eval_recipe


def calibration_recipe(meta: Any, overrides: Sequence[str]) -> Any:
    """The checkpoint's recipe with ``overrides`` (e.g. a moved ``data.root``), except that the
    split is always the recipe's own held-out split: ``T`` is fitted on validation data only."""
    kept = [o for o in overrides if o.partition("=")[0].strip() != "data.split"]
    return eval_recipe(meta, kept)


def calibrate_checkpoint(
    runner: Any, overrides: Sequence[str] = (), batch_size: int = 64, num_workers: int = 0
) -> dict[str, Any]:
    """Fit ``T`` for ``runner``'s checkpoint on its recipe's validation split; rewrite the checkpoint.

    Returns the summary plus ``split`` (the held-out split fitted on).

    Raises:
        AstroError: the model is not an astro ``.safetensors`` checkpoint (an ``.onnx`` file is
            calibrated through its checkpoint, then exported again).
    """
    from astrocli.data import build_datasets  # lazy: keeps start-up torch-free

    if runner.kind != "pytorch":
        raise AstroError(
            f"--calibrate needs the .safetensors checkpoint, not {runner.source}; calibrate the "
            "checkpoint, then export it again (the ONNX file carries the temperature)"
        )
    recipe = calibration_recipe(runner.meta, overrides)
    recipe.data.download = False
    bundle = build_datasets(recipe.data)
    # Log-probabilities are the logits shifted per row, and softmax(z / T) ignores that shift.
    logits, _, targets = collect_outputs(runner, bundle.val, batch_size, num_workers)
    summary = calibrate_logits(logits, targets)  # T = 1 with a reason when the fit cannot be trusted
    write_temperature(runner.source, summary["temperature"])
    runner.meta.temperature = summary["temperature"]
    summary["split"] = (bundle.split_info or {}).get("heldout_split", recipe.data.split)
    summary["num_samples"] = len(targets)
    return summary
