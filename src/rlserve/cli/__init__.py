"""The ``rlserve`` command line (typer + rich). Entry point: :func:`rlserve.cli.main.main`."""
