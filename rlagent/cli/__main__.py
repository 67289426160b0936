"""`python -m rlagent.cli ...` is the `rlagent` command."""

from rlagent.cli import main

main()
