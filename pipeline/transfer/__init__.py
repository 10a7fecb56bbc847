"""Transfer sets: the store's views nearest to a task's images, for training on a subset.

build.py          the command (`python -m pipeline.transfer_set`): queries, index, selection, sheet
queries.py        query images (class folders, plain folders, shards) embedded by the CLIP stage
gallery_index.py  a faiss index over every stored view's embedding
select.py         greedy selection of K views per query, no repeats, no held-out samples
contact_sheet.py  a picture of queries beside what they selected
"""
