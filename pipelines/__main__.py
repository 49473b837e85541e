"""``python -m atlas_pipelines``: the ``atlas`` command without its script (same exit status)."""

from atlas_pipelines.commands.cli import main

raise SystemExit(main())
