"""``python -m training.safety``: see :mod:`training.safety`."""

import sys

from training.safety import main

sys.exit(main())
