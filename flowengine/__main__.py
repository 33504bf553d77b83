"""`python -m flowengine`: the same as the `flowengine` command."""

import sys

from flowengine.cli import main

sys.exit(main())
