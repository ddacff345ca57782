"""``python -m components.cli``: the same as ``mlops``."""

import sys

from components.cli import main

sys.exit(main())
