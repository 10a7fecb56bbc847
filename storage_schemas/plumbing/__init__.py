"""Config and CLI plumbing: typed YAML configs with `--set`, one-line user errors, plain-text
tables, and the named fault points tests use to kill a process where exactly-once matters."""
