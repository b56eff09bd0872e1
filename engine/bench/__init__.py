"""ovstream benchmarks: the codelab's loops, the engine, benchmark_app's ceiling, transports, soak.

``ovstream bench`` (:mod:`engine.bench.cli`) runs them; the modules are usable on their own:
:mod:`engine.bench.loops` (sync / wait-completion async loops), :mod:`engine.bench.ceiling` (benchmark_app),
:mod:`engine.bench.engine_runs` (``ovstream run`` as a subprocess, sweep), :mod:`engine.bench.transport`
(one-hop frame transports), :mod:`engine.bench.soak` (memory over a long run), :mod:`engine.bench.plot`.
Nothing heavy is imported here, so a transport consumer process starts quickly.
"""
