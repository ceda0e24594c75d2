"""Several processes behind one port: N front processes and one engine process (``adaptformer serve --workers N``).

- :mod:`.supervisor`: the parent. Binds the port, starts the engine and the fronts, replaces a front that dies,
  restarts an engine that dies, stops them all on SIGTERM.
- :mod:`.engine`: the engine process. The whole one-process server (backbone, adapter manager, batcher, every
  admin route on a Unix socket) plus :class:`~.engine.EngineServer`, which takes decoded tensors from every front
  over ZeroMQ and batches them together.
- :mod:`.front`: a front process. HTTP, auth, Host/Origin checks, limits, decoding and answers for ``/predict``
  and ``/v2 .../infer``; every other route is passed to the engine process's app (one owner of adapter state).
- :mod:`.wire`: the messages between them (a small JSON header, tensors as zero-copy frames).
- :mod:`.shared`: the run directory and the engine's state block that every front reads.
- :mod:`.plan`: how many processes (``--workers``, ``--engine-process``); :mod:`.process`: what each child does
  first (die with its parent, a title in ``ps``).
"""
