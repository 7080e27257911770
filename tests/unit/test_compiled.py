"""numba's on-disk cache, shared by several processes (``sluice.compiled``)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from numba.core import caching

from sluice import compiled


def test_every_compiled_module_takes_njit_from_the_locked_cache() -> None:
    """A module that took ``njit`` from numba directly could compile and save before the lock
    is in place."""
    root = Path(compiled.__file__).resolve().parent
    direct = [str(path.relative_to(root)) for path in root.rglob("*.py")
              if "from numba import njit" in path.read_text() and path.name != "compiled.py"]  # fmt: skip
    assert direct == []
    assert compiled.cache_saves_locked
    assert getattr(caching.IndexDataCacheFile.save, "sluice_locked", False)


def test_two_saves_of_different_forms_of_one_function_at_once_keep_both(tmp_path: Path) -> None:
    """Two processes compile one function for different argument types and save at once. Each
    reads the index, finds no form there, names its data file ``.1.nbc`` and writes its index:
    the last index written keeps one form, the last data written may be the other's code.
    Here both saves read the index before either writes (each waits up to a second for the
    other to have read it); with the lock the second waits for the first to finish instead."""
    stamp = ("source stamp", 1)
    forms = {("(int32[::1],)", "target"): b"code for int32", ("(float64[::1],)", "target"): b"code for float64"}
    read = {key: threading.Event() for key in forms}

    def save(key: tuple[str, str]) -> None:
        index = caching.IndexDataCacheFile(str(tmp_path), "module.f-12.py311", stamp)
        load_index = index._load_index
        other = next(k for k in forms if k != key)

        def load_index_then_wait() -> dict[object, str]:
            overloads = load_index()
            read[key].set()
            read[other].wait(timeout=1.0)
            return overloads

        index._load_index = load_index_then_wait  # type: ignore[method-assign]
        index.save(key, forms[key])

    threads = [threading.Thread(target=save, args=(key,)) for key in forms]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    later = caching.IndexDataCacheFile(str(tmp_path), "module.f-12.py311", stamp)
    saved = {key: later.load(key) for key in forms}
    assert saved == forms
    assert len(set(later._load_index().values())) == 2


def test_installing_again_does_not_wrap_twice_and_an_unknown_numba_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    save = caching.IndexDataCacheFile.save
    assert compiled._install() and caching.IndexDataCacheFile.save is save  # not wrapped again
    monkeypatch.setattr(compiled, "caching", type("NumbaCachingWithoutIndexFiles", (), {}))
    assert compiled._install() is False
