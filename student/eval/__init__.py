"""Judging and looking at a student.

evaluate.py       the command (`python -m student.evaluate`): a task on a dataset, one result file
tasks.py          zero-shot classification, semantic segmentation, agreement with cached targets
inference.py      SamClipPredictor: a student as a predictor, SamPredictor's interface
zero_shot.py      class-name embeddings from the store's text tables or a text tower
options.py        the command's options shared with `student.visualize`
pictures.py       PNGs of targets and predictions
visualize.py      `python -m student.visualize`; inspect_store.py `python -m student.inspect_store`
"""
