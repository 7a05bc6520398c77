"""Lowest layer: atomic writes, the cache folder, logging set-up and the run-directory layout."""
