"""``python -m mptheory`` runs the command-line interface (see :mod:`mptheory.cli`)."""

from mptheory.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
