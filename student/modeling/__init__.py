"""The student network.

model.py    SamClip: SAM's ViT image encoder as backbone, a CLIP head and SAM's decoder head
build.py    a student from the training config: SAM's checkpoint in, a fresh CLIP head
load.py     a student from its export folder or a checkpoint
export.py   the export folder: weights, config and the teachers they came from
"""
