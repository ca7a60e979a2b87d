"""``python -m veilml``: the ``veilml`` command line."""

import sys

from veilml.cli import main

sys.exit(main())
