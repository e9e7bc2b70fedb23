"""``python -m surgeon.cli``."""

from surgeon.cli.app import main

main()
