"""`python -m bitware_mesh.cli …`, the same as the `bitware` console script."""

from bitware_mesh.cli import main

raise SystemExit(main())
