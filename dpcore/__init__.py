"""dpcore: the Distilled Pruning library (no UI imports)."""
