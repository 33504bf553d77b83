from flowengine.core.lru import LRU


def test_forgets_the_least_recently_used_first():
    cache: LRU[str, int] = LRU(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3
    cache.put("a", 10)  # replacing keeps one entry
    cache.put("d", 4)
    assert cache.get("a") == 10 and "c" not in cache and cache.get("x") is None
