"""``python -m gridvm``: the ``gridvm`` command."""

import sys

from gridvm.cli import main

sys.exit(main())
