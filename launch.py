#!/usr/bin/env python
"""dist_core's command line: ``python launch.py run jobs/quickstart.yaml`` (see ``--help``)."""

import sys

from dist_core.cli import main

if __name__ == "__main__":
    sys.exit(main())
