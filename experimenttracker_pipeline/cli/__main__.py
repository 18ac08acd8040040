"""`python -m experimenttracker_pipeline.cli` runs the `experimenttracker` command."""

import sys

from experimenttracker_pipeline.cli import main

sys.exit(main())
