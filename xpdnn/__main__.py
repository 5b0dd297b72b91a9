"""``python -m xpdnn`` (and ``torchrun ... -m xpdnn train``): the command line."""

from .cli import main

raise SystemExit(main())
