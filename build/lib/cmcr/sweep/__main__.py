import sys

from cmcr.sweep.cli import main

sys.exit(main())
