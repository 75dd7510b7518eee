"""`python -m bitware_core.cli …`, the same as the `bitware` console script."""

from bitware_core.cli import main

raise SystemExit(main())
