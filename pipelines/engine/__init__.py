"""The engine: the stage shape and loop, what a run's stages may read, the Dask executor and per-worker state."""
