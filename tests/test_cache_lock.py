"""kernels/cache_lock.py: processes adding signatures of one function to one Numba cache folder at once keep
every entry, and each key loads its own data (Numba's own save loses entries and can cross them)."""

import multiprocessing

from numba.core.caching import IndexDataCacheFile

import fastmnist.kernels.cpu  # noqa: F401  (installs the lock)
from fastmnist.kernels import cache_lock

PROCESSES, KEYS = 4, 40


def _add_keys(folder, who, start):
    cache_lock.install()                          # as importing the kernels does, in a spawned process too
    cache = IndexDataCacheFile(folder, "kernel-f", source_stamp=("stamp", 1))
    start.wait()
    for k in range(KEYS):
        cache.save((who, k), f"code of {who}/{k}")


def test_processes_saving_at_once_keep_every_entry_and_their_own_data(tmp_path):
    assert cache_lock.install() and IndexDataCacheFile.save is cache_lock.locked_save
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(PROCESSES)
    procs = [ctx.Process(target=_add_keys, args=(str(tmp_path), who, start)) for who in range(PROCESSES)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    cache = IndexDataCacheFile(str(tmp_path), "kernel-f", source_stamp=("stamp", 1))
    assert len(cache._load_index()) == PROCESSES * KEYS
    for who in range(PROCESSES):
        for k in range(KEYS):
            assert cache.load((who, k)) == f"code of {who}/{k}"


def test_a_stale_index_starts_again_from_the_first_data_file(tmp_path):
    old = IndexDataCacheFile(str(tmp_path), "kernel-f", source_stamp=("stamp", 1))
    old.save("sig", "old code")
    new = IndexDataCacheFile(str(tmp_path), "kernel-f", source_stamp=("stamp", 2))
    assert new.load("sig") is None                # the source changed: nothing of the old build is found
    new.save("sig", "new code")
    assert new.load("sig") == "new code" and old.load("sig") is None
