"""speed/fast.py's cache of the measured CPU dtype (cpu_dtype.json) on a hostile file system: a FIFO, a link to
/dev/zero or a deeply nested file at the cache's path is ignored quickly and left as it is, and an empty
or relative HOME / XDG_CACHE_HOME never puts the cache at the file system's root. (Measuring and caching
themselves are tests/test_fast.py's.)
"""

import os
import stat

import pytest

from speed import fast


def fake_timer(name, width):
    return {"fp32": 3.0, "bf16": 2.0, "int8": 1.0}[name]


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "deep"])
def test_a_hostile_dtype_cache_is_ignored_quickly(tmp_path, alarm, kind):
    cache = tmp_path / "cpu_dtype.json"
    if kind == "fifo":
        os.mkfifo(cache)
    elif kind == "/dev/zero":
        os.symlink("/dev/zero", cache)
    else:
        cache.write_text("[" * 100_000 + "]" * 100_000)
    alarm(20)
    assert fast.measure_cpu_dtype(768, timer=fake_timer, cache=str(cache), verbose=False) == "fp32"
    assert not stat.S_ISREG(os.lstat(cache).st_mode) or kind == "deep"     # a FIFO or a link is left as it is


def test_an_empty_home_never_puts_the_cache_at_the_filesystem_root(monkeypatch):
    monkeypatch.setenv("HOME", "")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    path = fast.default_cache_path()
    assert path is None or not path.startswith("/.cache")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")                   # the XDG spec ignores a relative one
    path = fast.default_cache_path()
    assert path is None or os.path.isabs(path) and not path.startswith("/.cache")
