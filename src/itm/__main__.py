"""``python -m itm ...`` (and ``torchrun ... -m itm ...``): the command line."""

import sys

from itm.cli import main

sys.exit(main())
