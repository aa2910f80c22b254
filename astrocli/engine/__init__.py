"""The training engine: the loop (:mod:`.trainer`), resume state (:mod:`.state`), console output
(:mod:`.console`) and DDP helpers (:mod:`.distributed`).

    from astrocli.engine import train
    run_dir = train(load_recipe("quickstart"))
"""

from astrocli.engine.trainer import NonFiniteLoss, Trainer, TrainingInterrupted, train

__all__ = ["NonFiniteLoss", "Trainer", "TrainingInterrupted", "train"]
