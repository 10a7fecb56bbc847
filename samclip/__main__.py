"""`python -m samclip`: the same as the `samclip` command."""

from samclip.cli import main

main()
