"""Quadrature tables on disk (infinet.engine.table_cache): read back bit for bit, never a foreign or damaged file."""

import pathlib

import pytest
import torch

import infinet as inf
from infinet.engine import gaussian, table_cache, variance_interpolation


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("INFINET_CACHE", "on")
    monkeypatch.setenv("INFINET_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(gaussian, "UNIFORM_MIN_ENTRIES", 1)
    monkeypatch.setattr(variance_interpolation, "_TABLES", [])  # a fresh process: nothing in memory
    return tmp_path / "tables"


def _tanh_call():
    g = torch.Generator().manual_seed(0)
    var1 = torch.exp(torch.rand(12, 1, generator=g, dtype=torch.float64) * 2 - 1)
    var2 = torch.exp(torch.rand(1, 10, generator=g, dtype=torch.float64) * 2 - 1)
    cov = (torch.rand(12, 10, generator=g, dtype=torch.float64) * 1.8 - 0.9) * torch.sqrt(var1 * var2)
    return lambda: inf.Tanh().expectations(cov, var1, var2)


def _builds(monkeypatch) -> list:
    calls = []
    original = variance_interpolation.build

    def counted(*args):
        calls.append(args[1:])
        return original(*args)

    monkeypatch.setattr(variance_interpolation, "build", counted)
    return calls


def test_a_stored_table_is_read_back_instead_of_built_and_gives_the_same_bits(cache, monkeypatch):
    call = _tanh_call()
    builds = _builds(monkeypatch)
    first = call()
    assert len(builds) == 1 and len(list(cache.glob("*.pt"))) == 1
    monkeypatch.setattr(variance_interpolation, "_TABLES", [])  # the next process
    again = call()
    assert len(builds) == 1  # read, not built
    for a, b in zip(first, again):
        assert torch.equal(a, b)


@pytest.mark.parametrize("damage", ["truncated", "flipped", "foreign", "malformed"])
def test_a_damaged_or_foreign_file_is_rebuilt_never_used(cache, monkeypatch, damage):
    call = _tanh_call()
    first = call()
    (path,) = cache.glob("*.pt")
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flipped":  # one coefficient changed: the stored digest no longer matches
        stored = torch.load(path, weights_only=True)
        stored["tensors"]["c"][0, 1, 0, 0] += 1e-3
        torch.save(stored, path)
    elif damage == "malformed":  # a consistent file whose numbers cannot be a table (NaN), digest and all
        stored = torch.load(path, weights_only=True)
        stored["tensors"]["c"][0, 0, 0, 0] = float("nan")
        table_cache.save(stored["key"], stored["tensors"])
    else:  # another key's table under this name
        stored = torch.load(path, weights_only=True)
        stored["key"] = stored["key"].replace("Tanh", "Sigmoid")
        torch.save(stored, path)
    monkeypatch.setattr(variance_interpolation, "_TABLES", [])
    builds = _builds(monkeypatch)
    again = call()
    assert len(builds) == 1  # rebuilt
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    found, tensors = table_cache.load(torch.load(path, weights_only=True)["key"])
    assert found and tensors is not None  # and stored again, valid


def test_off_user_functions_and_unwritable_folders_store_nothing(cache, monkeypatch, tmp_path):
    monkeypatch.setenv("INFINET_CACHE", "off")
    _tanh_call()()
    assert not cache.exists()
    monkeypatch.setenv("INFINET_CACHE", "on")
    g = torch.Generator().manual_seed(1)
    var1 = torch.rand(8, 1, generator=g, dtype=torch.float64) + 0.5
    var2 = torch.rand(1, 8, generator=g, dtype=torch.float64) + 0.5
    cov = 0.3 * torch.sqrt(var1 * var2)
    inf.Elementwise(lambda x: torch.tanh(x) + 0.1 * x).expectations(cov, var1, var2)  # a user's function
    assert not cache.exists()
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("INFINET_CACHE_DIR", str(blocked))
    monkeypatch.setattr(variance_interpolation, "_TABLES", [])
    nngp, kdot = _tanh_call()()  # the folder cannot be made: the table is built and used all the same
    assert torch.isfinite(nngp).all() and torch.isfinite(kdot).all()


def test_keys_name_everything_that_decides_a_table():
    key = table_cache.persistent_key((inf.LeakyRelu, (0.1,)), 8, 0, "cpu", -2.0, 2.0)
    assert "LeakyRelu(0.1,)" in key and "lo=-2.0" in key and torch.__version__ in key
    assert table_cache.persistent_key((inf.Tanh, ()), 8, 0, "cpu", -2.0, 4.0) != table_cache.persistent_key(
        (inf.Tanh, ()), 8, 0, "cpu", -2.0, 2.0)
    assert table_cache.persistent_key((torch.tanh, None), 8, 0, "cpu", -2.0, 2.0) is None
    local = type("Mine", (inf.Tanh,), {})
    assert table_cache.persistent_key((local, ()), 8, 0, "cpu", -2.0, 2.0) is None


def test_an_unresolved_range_is_stored_as_such(cache):
    table_cache.save("some key", None)
    assert table_cache.load("some key") == (True, None)
    assert table_cache.load("another key") == (False, None)
    assert not list(pathlib.Path(cache).glob("*.tmp"))
