"""The adapter repository: the store directory of adapter files and everything the server keeps about it.

- :mod:`.names`: what a task name and a version may be (the rules every route and the store share);
- :mod:`.record`: :class:`~.record.AdapterEntry`, the one record of a stored adapter version, and its file
  :class:`~.record.Stamp`;
- :mod:`.layout`: :class:`~.layout.AdapterStore`, the files on disk: current files, the kept history, atomic
  writes, leftovers of crashes;
- :mod:`.index`: the one index on disk (checked headers and versions by file stamp), so a restart opens no
  unchanged file;
- :mod:`.quarantine`: moving a file the server cannot read out of the way, once for current and kept files;
- :mod:`.watcher`: noticing what other processes did to a shared store;
- :mod:`.seed`: the demo adapters copied into a new store;
- :mod:`.registry`: the task name -> current entry table, with the pinned kept versions;
- :mod:`.resident`: the adapters resident on the device (least recently used out).

The server's :class:`~adaptformer_server.services.adapters.AdapterManager` owns one of each and is the only
writer of adapter state in a server (the engine process, when the server runs front processes).
"""
