"""`python -m fastsend`: the command line."""

import sys

from fastsend.cli import main

sys.exit(main())
