"""The student's data path: cached targets and images from the store, one view per sample.

epoch_plan.py     each epoch planned before any image is read: pieces of units dealt to streams
pieces.py         a unit's samples in runs, read by byte range; the held-out split
stream_reader.py  one stream's pieces read ahead
batches.py        batches for the trainer (CLIP views, SAM prompts and target logits), the Loader
unit_samples.py   a committed unit's samples whole, with every stored view (validation, inspection)
"""
