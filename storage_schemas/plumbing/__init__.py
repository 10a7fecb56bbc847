"""What the pixels and the store rest on: sample identity and seeds, the errors table's reasons,
file facts at fsspec URLs, typed YAML configs with `--set`, one-line user errors, plain-text tables,
the named fault points tests use to kill a process where exactly-once matters, and a filesystem
that counts the bytes read."""
