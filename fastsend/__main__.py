import sys

from fastsend.cli import main

sys.exit(main())
