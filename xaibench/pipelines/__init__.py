"""The pipelines, each one library call: `generate` (stores of maps), `evaluate_store` (tables of
metrics), `sanity_check`, `explain_image` and `verify_dataset`, with their checkpoints and the
stores they open."""
