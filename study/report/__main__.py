"""``python -m study.report --run-dir RUN_DIR``: redraw a run's report and figures."""

import sys

from study.report.cli import main

sys.exit(main())
