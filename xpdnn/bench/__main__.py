"""``python -m xpdnn.bench``: the harness's command line (:func:`xpdnn.bench.cli.main`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
