"""``python -m attnconv`` (and ``torchrun -m attnconv``) runs the command line."""

import sys

from attnconv.cli import main

sys.exit(main())
