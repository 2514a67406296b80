"""What every other package stands on: errors, registries, atomic writes, timing, chunked batching,
the device runtime and forward precision. Imports nothing else of xaibench."""
