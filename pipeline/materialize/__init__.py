"""The materialize job: every committed unit holds the teachers' targets for its samples, once.

Read in this order:
    job.py            the command: config, start-up checks, Ray, one run per kind, the report
    plan.py           what a run will do: shards, units, what is committed (also `python -m pipeline.plan`)
    kind_jobs.py      one kind's run: read tasks -> teacher dataset -> driver loop
    units.py          read tasks: a shard's samples as rows, one unit at a time, with claims
    clip_targets.py   the CLIP teacher stage (views, embeddings); sam_targets.py and sam_prompts.py for SAM
    parts.py          what a teacher actor writes (part files) and returns to the driver
    driver_loop.py    the driver: collects parts per unit, commits, waits for units other jobs hold
    unit_commit.py    commit records (create-if-absent) and the clean-up of a job's own leftovers
    claims.py         claims that let several jobs share a store's units
    report.py         the run's summary and JSON report
    sources.py, read_plan.py, teacher_dataset.py, job_manifests.py, ray_session.py: input shards,
    which read tasks run, the Ray Data pipeline, the manifests, joining or starting Ray
"""
