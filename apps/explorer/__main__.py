"""``python -m apps.explorer --run runs/x`` (see :mod:`apps.explorer.app`)."""

import sys

from apps.explorer.app import main

if __name__ == "__main__":
    sys.exit(main())
