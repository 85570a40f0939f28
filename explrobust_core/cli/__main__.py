"""``python -m explrobust_core.cli`` (the job workers start this way)."""

import sys

from . import main

sys.exit(main())
