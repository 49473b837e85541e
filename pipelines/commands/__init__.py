"""The commands: ``atlas run``, ``classes``, ``train``, ``compare`` and the command line that parses them."""
