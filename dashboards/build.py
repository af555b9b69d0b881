"""Build a study report: ``python dashboards/build.py --study NAME`` → reports/NAME/index.html."""

import sys

from cmcr.results.report import main

if __name__ == "__main__":
    sys.exit(main())
