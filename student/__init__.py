"""The SAM-CLIP student: model, data from the target store, trainer, evaluation."""
