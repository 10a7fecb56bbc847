"""The SAM-CLIP student, trained from the target store with no teacher in memory.

    train.py        the entry point (`accelerate launch student/train.py --config CONFIG.yaml`)
    trainer.py      the training loop: stages, steps, validation, checkpoints; open it first
    losses.py       the CLIP (1 - cos) and SAM (focal + dice on cached logits) losses
    validation.py   held-out loss and agreement during training
    metrics.py      mask IoU, agreement and accuracy, shared by validation and evaluation
    config.py       the training config (typed dataclasses loaded from YAML with --set overrides)
    run_dir.py      the run folder: config, resume, "same config" checks
    preemption.py   stop signals agreed by every process, the preempted marker
    trackers.py     experiment trackers (log_with: tensorboard, wandb, mlflow), named after the run
    modeling/       the network (backbone, CLIP head, SAM head), its registry, loading and export
    data/           epoch plans, pieces of units, stream readers and batches from the store
    eval/           inference, zero-shot and segmentation tasks, pictures (`student.evaluate`)
    sweeps/         grids of training runs and their comparison (`student.sweep`, `student.compare`)

Layers: eval/ and sweeps/ use the trainer's modules, data/ and modeling/; never the reverse.
"""
