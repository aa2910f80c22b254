"""The training engine: the entry point (:mod:`.launch`: ``train``, ``build_trainer``), the loop
(:mod:`.trainer`), the parts it is built from (:mod:`.build`), the run directory's files
(:mod:`.run_dir`), resume state (:mod:`.state`), console output (:mod:`.console`), experiment
loggers (:mod:`.loggers`), DDP helpers (:mod:`.distributed`), fine-tuning (:mod:`.finetune`) and
temperature scaling after training (:mod:`.calibrate`).

    from astrocli.engine import train
    run_dir = train(load_recipe("quickstart"))

The names below are imported on first use, so that reading a run directory
(``astrocli.engine.run_dir``) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from astrocli.engine.launch import train
    from astrocli.engine.trainer import NonFiniteLoss, Trainer, TrainingInterrupted

__all__ = ["NonFiniteLoss", "Trainer", "TrainingInterrupted", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from astrocli.engine import launch, trainer  # lazy: keeps start-up torch-free

        return getattr(launch if name == "train" else trainer, name)
    raise AttributeError(f"module 'astrocli.engine' has no attribute {name!r}")
