"""`python -m neurorit ...` runs the command line."""

import sys

from neurorit.cli import main

sys.exit(main())
