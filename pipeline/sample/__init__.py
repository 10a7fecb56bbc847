"""The sample corpus (webdataset and SA-1B-style shards of real photos), small evaluation sets, and
synthetic stores and embeddings for benchmarks and tests.

    corpus.py             the command (`python -m pipeline.sample_data`): shards and eval sets
    eval_sets.py          the segmentation set (VOC layout) made from the same photos
    synthetic_store.py    a store written without Ray or teachers, at real shapes
    synthetic_vectors.py  CLIP-like embeddings around centroids, for retrieval
"""
