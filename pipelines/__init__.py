"""Orchestration: wires atlas library stages into Dask graphs, caches and resumes them."""
