"""`python -m refpose ...` runs the `refpose` command."""
import sys

from .cli import main

sys.exit(main())
