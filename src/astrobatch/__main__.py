"""``python -m astrobatch`` runs the CLI."""

from astrobatch.cli import main

main()
