"""The teacher side: Ray Data jobs that run the frozen teachers once and write the target store.

    materialize/   the job: plan, read shards into units, teacher stages, driver, commits, report
                   (open `materialize/job.py` first: the command, then `kind_jobs.py`)
    teachers/      the frozen OpenCLIP and SAM teachers, their fingerprints, tiny test teachers
    transfer/      transfer sets: a gallery index of the store's views, query images, selection
    sample/        the sample corpus and evaluation sets the demo and the tests use
    config.py      the job config (typed dataclasses loaded from YAML with --set overrides)
    validate.py    store maintenance: check records against files, --gc, --uncommit-damaged
    verify.py      recompute sampled targets with the teachers and compare
    text_targets.py  class-name text embeddings with the store's CLIP teacher

Commands (`python -m NAME` or `samclip SUBCOMMAND`): pipeline.sample_data, pipeline.plan,
pipeline.materialize, pipeline.text_targets, pipeline.validate, pipeline.verify,
pipeline.transfer_set, pipeline.teachers.tiny.
"""
