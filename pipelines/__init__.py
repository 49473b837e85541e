"""Orchestration, installed as ``atlas_pipelines``: the engine, the stages and the commands that wire the atlas library into Dask graphs."""
