"""Experiments as files: a TOML config, its checks, its plan and the run that carries it out."""
