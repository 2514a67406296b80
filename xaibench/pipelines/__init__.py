"""The pipelines, each one library call: `generate` (stores of maps), `evaluate_store` (tables of
metrics; `evaluate_stores` for several stores into their folders), `sanity_check`, `explain_image`
and `verify_dataset`, with their checkpoints and the stores they open; `RunSettings` holds the
device, batch size and speed settings they share."""
