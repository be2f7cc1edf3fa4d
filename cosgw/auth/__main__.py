"""C{python -m cosgw.auth}: the C{cosgw-passwd} console script."""

import sys

from cosgw.auth.passwd import main

sys.exit(main())
