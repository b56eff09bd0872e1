"""ovstream benchmarks: the codelab's loops, the engine, benchmark_app's ceiling, transports, soak.

``ovstream bench`` (:mod:`engine.tools.bench.cli`) runs them; the modules are usable on their own:
:mod:`engine.tools.bench.loops` (sync / wait-completion async loops), :mod:`engine.tools.bench.ceiling` (benchmark_app),
:mod:`engine.tools.bench.engine_runs` (``ovstream run`` as a subprocess, sweep), :mod:`engine.tools.bench.transport`
(one-hop frame transports), :mod:`engine.tools.bench.soak` (memory over a long run), :mod:`engine.tools.bench.plot`.
Nothing heavy is imported here, so a transport consumer process starts quickly.
"""
