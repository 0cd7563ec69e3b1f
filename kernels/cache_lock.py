"""Numba's on-disk cache made safe for several processes compiling into one folder at once.

Numba (numba/core/caching.py, IndexDataCacheFile.save) keeps one index file per compiled function, mapping each
signature to a data file, and adds a signature by reading the index, choosing the first free data file number and
rewriting the index, without a lock, and the index before the data. Two processes adding different signatures
of one function at the same moment (the workers of a `sweep` on a local Dask cluster, or of the tests under
pytest-xdist, compiling the same kernels) can then both take data file 1: one signature's entry is lost, and
the other may load the first's machine code for its own argument types. Between the two writes, a reader can
also find a name whose file still holds an older build.

`install()` makes each save one step under an exclusive lock on a file beside the index (fcntl.flock, released
by the kernel if the process dies), and writes the data before the index that names it. Both files are already
written to a temporary name and renamed into place, so readers need no lock. Where flock does not exist, or
Numba's internals differ from what this expects, the cache is left as Numba made it.
"""

from __future__ import annotations

import itertools
import os

try:
    import fcntl
except ImportError:           # not POSIX: no lock (one process per cache folder is then the user's care)
    fcntl = None

_METHODS = ("save", "_load_index", "_save_index", "_save_data", "_data_name")
_numba_save = None


def locked_save(self, key, data):
    """IndexDataCacheFile.save under the folder's lock, the data file written before the index names it."""
    if not (hasattr(self, "_index_path") and hasattr(self, "_cache_path")):
        return _numba_save(self, key, data)
    os.makedirs(self._cache_path, exist_ok=True)
    with open(self._index_path + ".lock", "ab") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        overloads = self._load_index()
        name = overloads.get(key)
        if name is None:
            taken = set(overloads.values())
            name = next(n for n in map(self._data_name, itertools.count(1)) if n not in taken)
        self._save_data(name, data)
        if overloads.get(key) != name:
            overloads[key] = name
            self._save_index(overloads)


def install() -> bool:
    """Puts locked_save in place of Numba's save (once); True when the cache is now locked."""
    from numba.core import caching

    cls = getattr(caching, "IndexDataCacheFile", None)
    if cls is None or fcntl is None or not all(hasattr(cls, name) for name in _METHODS):
        return False
    if cls.save is not locked_save:
        global _numba_save
        _numba_save, cls.save = cls.save, locked_save
    return True
