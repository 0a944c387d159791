"""`python -m refpose` (and `torchrun -m refpose`): the refpose command."""
import sys

from .cli import main

sys.exit(main())
