"""The ``surgeon`` command line (``surgeon.cli.app``)."""
