"""Results on disk and in memory: where every output lives (`layout`), the sanity and explanation
results, and the statistics of per-image tables."""
