"""``distilserve bench``: a load generator for distilserve, its baselines, and their report."""
