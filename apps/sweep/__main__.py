import sys

from apps.sweep import main

if __name__ == "__main__":
    sys.exit(main())
