"""``python -m apt_policy.data`` = ``apt-data``."""

import sys

from apt_policy.data.cli import main

sys.exit(main())
