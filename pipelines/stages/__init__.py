"""One module per pipeline stage: what it reads, how it is keyed, and the work it submits; assemble writes the bundle's index files last."""
