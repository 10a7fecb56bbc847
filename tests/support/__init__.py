"""Helpers the tests share (functions and constants; the fixtures stay in tests/conftest.py).

- `commands`: the repository root, commands run as a user runs them (a subprocess) or in-process
  through `run_cli`, and the one-line error check;
- `job_configs`: job configs built as `pipeline.config.JobConfig` values and written as YAML;
- `store_checks`: a store is sound, every sample is in it exactly once;
- `services`: loopback ports and the credentials of the session's S3 server.
"""
