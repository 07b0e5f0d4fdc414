"""``python -m mdnet <job>``: the same as the ``mdnet`` command (see :mod:`mdnet.cli`)."""

import sys

from mdnet.cli import main

if __name__ == "__main__":
    sys.exit(main())
