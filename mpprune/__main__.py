"""``python -m mpprune``: the command line (:mod:`mpprune.cli`)."""

import sys

from mpprune.cli import main

sys.exit(main())
