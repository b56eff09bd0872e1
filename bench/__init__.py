"""ovstream benchmarks: the codelab's loops, the engine, benchmark_app's ceiling, transports, soak.

``ovstream bench`` (:mod:`bench.cli`) runs them; the modules are usable on their own:
:mod:`bench.loops` (sync / wait-completion async loops), :mod:`bench.ceiling` (benchmark_app),
:mod:`bench.engine_runs` (``ovstream run`` as a subprocess, sweep), :mod:`bench.transport`
(one-hop frame transports), :mod:`bench.soak` (memory over a long run), :mod:`bench.plot`.
Nothing heavy is imported here, so a transport consumer process starts quickly.
"""
