"""The application layer: ``apps.study`` (the whole study for one preset into one run directory, composing the
library functions of ``training`` and ``analysis``) and ``apps.explorer`` (the Dash app over a run). Nothing imports
``apps``."""
