"""From per-frame results to tracked objects: the tracker (:mod:`.bytetrack`, its Kalman filter in
:mod:`.kalman`) and each stream's tracking state (:mod:`.streams`). Pure logic on
:class:`~engine.core.results.FrameResult` s: no processes, sockets or files."""
