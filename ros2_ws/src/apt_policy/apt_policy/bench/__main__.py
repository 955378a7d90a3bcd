"""``python -m apt_policy.bench``: the whole benchmark report (``make bench``)."""

import sys

from apt_policy.bench.report import main

sys.exit(main())
