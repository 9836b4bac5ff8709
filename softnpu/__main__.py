"""`python -m softnpu`: the same command line as the `softnpu` console script."""

import sys

from softnpu.host.cli.commands import main

if __name__ == "__main__":
    sys.exit(main())
