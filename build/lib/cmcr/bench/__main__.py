import sys

from cmcr.bench import main

sys.exit(main())
