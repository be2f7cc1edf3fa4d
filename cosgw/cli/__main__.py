"""C{python -m cosgw.cli}: the C{cosgw} console script."""

import sys

from cosgw.cli.main import main

sys.exit(main())
