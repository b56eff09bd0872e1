"""One module per process role; each has a single entry point ``run(cfg, ctx)``."""
