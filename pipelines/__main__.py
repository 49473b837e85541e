"""``python -m atlas_pipelines``: the ``atlas`` command without its script."""

from atlas_pipelines.commands.cli import main

main()
