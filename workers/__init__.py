"""One module per process role: a :class:`~workers.runtime.StageLoop` subclass whose methods are the
role's handlers, and the entry point ``run(ctx, stage)`` that runs it."""
