"""The `samclip` command: a subcommand per tool (see samclip.cli)."""
