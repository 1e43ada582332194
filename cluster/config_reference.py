"""``python -m ostracon.cluster.config_reference``: print, write or check the README's configuration
table (the generator is :mod:`ostracon.cluster.config.reference`)."""

import sys

from .config.reference import main

if __name__ == "__main__":
    sys.exit(main())
