"""Residency cache: LRU by bytes and by slots, pinned and in-use adapters stay, CPU tier hits,
failed loads leave no trace, and a drop under use frees at the last release."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import torch
from torch import nn

from app.errors import SwitchyardError
from app.registry.weights import AdapterWeights
from app.runtime.cache import AdapterCache, CacheLimits, Resident
from app.runtime.layers import LayerSet
from app.runtime.metrics import Metrics

WIDTH = 4
BYTES = 2 * 1 * WIDTH * 4  # rank 1: A [1, 4] + B [4, 1], float32


class Loader:
    """A fake registry: rank-1 adapters on layer "0", counted calls, optional failures."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.fail: set[str] = set()

    def __call__(self, name: str, version: int) -> AdapterWeights:
        self.calls.append((name, version))
        if name in self.fail:
            raise SwitchyardError(503, "adapter_corrupted", f"{name} is broken")
        seed = sum(map(ord, name)) + version
        gen = torch.Generator().manual_seed(seed)
        pair = (torch.randn(1, WIDTH, generator=gen), torch.randn(WIDTH, 1, generator=gen))
        return AdapterWeights(
            method="lora", task="classification", labels=["a", "b"], lora={"0": pair}, rank=1
        )


def build(
    *,
    max_slots: int = 8,
    device_bytes: int = 10 * BYTES,
    cpu_bytes: int = 10 * BYTES,
    pinned: Callable[[str], bool] = lambda _n: False,
) -> tuple[AdapterCache, Loader, Metrics, LayerSet]:
    model = nn.Sequential(nn.Linear(WIDTH, WIDTH))
    layers = LayerSet(model, ["0"])
    loader, metrics = Loader(), Metrics()
    cache = AdapterCache(
        layers,
        loader,
        limits=CacheLimits(max_slots, device_bytes, cpu_bytes),
        device=torch.device("cpu"),
        metrics=metrics,
        is_pinned=pinned,
    )
    return cache, loader, metrics, layers


def use(cache: AdapterCache, *names: str, version: int = 1) -> None:
    """Acquire and release each, in order (so the last is the most recently used)."""
    for name in names:
        cache.release(cache.acquire(name, version))


def loads(metrics: Metrics, name: str, source: str) -> float:
    value = metrics.registry.get_sample_value(
        "switchyard_adapter_loads_total", {"adapter": name, "source": source}
    )
    return value or 0.0


def where(cache: AdapterCache, *names: str) -> list[str]:
    return [cache.residency(n, 1) for n in names]


def test_acquire_loads_once_and_copies_into_a_slot() -> None:
    cache, loader, metrics, layers = build()
    resident = cache.acquire("a", 1)
    assert resident.slot >= 1 and resident.refs == 1
    layer = layers.layers["0"]
    a, b = loader("a", 1).lora["0"]
    assert torch.equal(layer.lora_a[resident.slot, :1], a)
    assert torch.equal(layer.lora_b[resident.slot, :, :1], b)
    again = cache.acquire("a", 1)
    assert again is resident and resident.refs == 2
    assert loader.calls == [("a", 1), ("a", 1)]  # the second is the test's own call above
    assert loads(metrics, "a", "disk") == 1
    cache.release(again)
    cache.release(resident)
    assert cache.stats()["device_adapters"] == 1 and cache.stats()["device_bytes"] == BYTES


def test_lru_eviction_by_bytes() -> None:
    cache, _loader, metrics, _layers = build(device_bytes=3 * BYTES)
    use(cache, "a", "b", "c")
    use(cache, "a")  # a is now the most recent: b is the oldest
    use(cache, "d")
    assert where(cache, "a", "b", "c", "d") == ["device", "cpu", "device", "device"]
    assert cache.stats()["device_bytes"] == 3 * BYTES
    use(cache, "e")
    assert where(cache, "c", "e") == ["cpu", "device"]
    evicted = metrics.registry.get_sample_value(
        "switchyard_adapter_evictions_total", {"adapter": "b", "tier": "device"}
    )
    assert evicted == 1


def test_lru_eviction_by_slots() -> None:
    cache, _loader, _metrics, layers = build(max_slots=2, device_bytes=100 * BYTES)
    use(cache, "a", "b", "c")
    assert where(cache, "a", "b", "c") == ["cpu", "device", "device"]
    assert cache.stats()["device_adapters"] == 2
    assert layers.slot_capacity <= 3  # slot 0 plus max_slots
    use(cache, "a")
    assert where(cache, "a", "b", "c") == ["device", "cpu", "device"]


def test_pinned_is_never_evicted() -> None:
    cache, _loader, _metrics, _layers = build(max_slots=2, pinned=lambda n: n == "a")
    use(cache, "a", "b", "c", "d", "e")
    assert where(cache, "a", "e") == ["device", "device"]
    assert where(cache, "b", "c", "d") == ["cpu", "cpu", "cpu"]
    cache.set_pinned("e", True)
    with pytest.raises(SwitchyardError) as info:
        cache.acquire("f", 1)
    assert (info.value.status, info.value.code) == (429, "no_free_slot")
    assert info.value.headers.get("Retry-After")
    cache.set_pinned("e", False)
    use(cache, "f")
    assert where(cache, "a", "e", "f") == ["device", "cpu", "device"]


def test_a_pin_holds_only_the_newest_version() -> None:
    """Each retrained version of a pinned adapter must not keep a slot forever."""
    cache, _loader, _metrics, _layers = build(max_slots=2, pinned=lambda n: n == "a")
    for version in (1, 2, 3, 4):
        use(cache, "a", version=version)
    assert cache.residency("a", 4) == "device"
    use(cache, "b", "c", "d")
    assert cache.residency("a", 4) == "device"
    assert [cache.residency("a", v) for v in (1, 2, 3)] == ["cpu", "cpu", "cpu"]
    # an old version asked for by number runs, but does not take the pin
    use(cache, "a", version=1)
    use(cache, "e")
    assert (cache.residency("a", 4), cache.residency("a", 1)) == ("device", "cpu")
    cache.set_pinned("a", True)  # PATCH again: still only the newest resident version
    use(cache, "a", version=2)
    use(cache, "f")
    assert (cache.residency("a", 4), cache.residency("a", 2)) == ("device", "cpu")


def test_in_use_is_never_evicted() -> None:
    cache, _loader, _metrics, _layers = build(max_slots=2)
    a, b = cache.acquire("a", 1), cache.acquire("b", 1)
    before = cache.stats()
    with pytest.raises(SwitchyardError) as info:
        cache.acquire("c", 1)
    assert (info.value.status, info.value.code) == (429, "no_free_slot")
    assert info.value.headers == {"Retry-After": "1"}
    assert cache.stats() == before and where(cache, "a", "b", "c") == ["device", "device", "disk"]
    cache.release(b)
    use(cache, "c")
    assert where(cache, "a", "b", "c") == ["device", "cpu", "device"]
    cache.release(a)


def test_cpu_tier_hit_counts_as_cpu() -> None:
    cache, loader, metrics, _layers = build(max_slots=1)
    use(cache, "a", "b")
    assert where(cache, "a", "b") == ["cpu", "device"]
    calls = len(loader.calls)
    use(cache, "a")
    assert len(loader.calls) == calls  # no file read
    assert loads(metrics, "a", "cpu") == 1 and loads(metrics, "a", "disk") == 1
    assert where(cache, "a", "b") == ["device", "cpu"]


def test_cpu_tier_is_bounded_by_bytes() -> None:
    cache, _loader, metrics, _layers = build(max_slots=1, cpu_bytes=2 * BYTES)
    use(cache, "a", "b", "c", "d")
    assert where(cache, "a", "b", "c", "d") == ["disk", "cpu", "cpu", "device"]
    assert cache.stats()["cpu_bytes"] == 2 * BYTES
    dropped = metrics.registry.get_sample_value(
        "switchyard_adapter_evictions_total", {"adapter": "a", "tier": "cpu"}
    )
    assert dropped == 1


def test_failed_load_leaves_no_trace() -> None:
    cache, loader, metrics, layers = build(max_slots=2)
    use(cache, "a")
    before = (cache.stats(), layers.layers["0"].ranks[:], layers.layers["0"].lora_a.clone())
    loader.fail.add("bad")
    for _ in range(3):
        with pytest.raises(SwitchyardError) as info:
            cache.acquire("bad", 1)
        assert info.value.code == "adapter_corrupted"
    assert (cache.stats(), layers.layers["0"].ranks[:]) == before[:2]
    assert torch.equal(layers.layers["0"].lora_a, before[2])
    assert where(cache, "a", "bad") == ["device", "disk"]
    assert loads(metrics, "bad", "disk") == 0
    # the slot count is intact: one more adapter still fits beside "a" without evicting it
    use(cache, "b")
    assert where(cache, "a", "b") == ["device", "device"]


def test_failed_copy_returns_its_slot() -> None:
    cache, loader, _metrics, _layers = build(max_slots=2)
    real = loader.__call__

    def broken(name: str, version: int) -> AdapterWeights:
        weights = real(name, version)
        if name == "odd":
            weights.lora = {"nowhere": weights.lora["0"]}  # not a wrapped module
        return weights

    cache.loader = broken
    use(cache, "a")
    before = cache.stats()
    with pytest.raises(KeyError):
        cache.acquire("odd", 1)
    # capacity may have grown for the copy; what is resident and counted has not changed
    after = cache.stats()
    assert {**after, "slot_capacity": 0} == {**before, "slot_capacity": 0}
    use(cache, "b")
    assert where(cache, "a", "b", "odd") == ["device", "device", "disk"]
    assert sorted(r.slot for r in cache._device.values()) == [1, 2]


def test_drop_while_in_use_frees_at_last_release() -> None:
    cache, _loader, _metrics, layers = build()
    first, second = cache.acquire("a", 1), cache.acquire("a", 1)
    slot = first.slot
    cache.drop("a")
    assert where(cache, "a") == ["disk"]
    # the running batch still reads its weights from the slot
    assert layers.layers["0"].ranks[slot] == 1 and layers.layers["0"].lora_a[slot].any()
    cache.release(first)
    assert layers.layers["0"].ranks[slot] == 1
    cache.release(second)
    assert layers.layers["0"].ranks[slot] == 0 and not layers.layers["0"].lora_a[slot].any()
    assert first.slot == -1
    assert cache.acquire("b", 1).slot == slot  # the freed slot is reused


def test_drop_unused_frees_now_and_forgets_cpu_copies() -> None:
    cache, _loader, _metrics, layers = build(max_slots=1)
    use(cache, "a", "b")  # a in cpu, b on the device
    cache.drop("a")
    cache.drop("b")
    assert where(cache, "a", "b") == ["disk", "disk"]
    assert cache.stats()["device_adapters"] == 0 and cache.stats()["cpu_adapters"] == 0
    assert not layers.layers["0"].lora_a.any()


def test_adapter_over_the_device_budget_is_refused() -> None:
    cache, _loader, _metrics, _layers = build(device_bytes=BYTES - 1)
    with pytest.raises(SwitchyardError) as info:
        cache.acquire("a", 1)
    assert info.value.code == "adapter_too_large"
    assert cache.stats()["device_adapters"] == 0


def test_cpu_device_keeps_lora_only_in_the_slot_and_evicts_it_whole() -> None:
    # Regression: resident adapters were held twice on a CPU device (file tensors + slot).
    cache, loader, _metrics, layers = build(max_slots=1)
    resident = cache.acquire("a", 1)
    assert resident.weights.lora == {} and resident.lora_in_slot
    cache.release(resident)
    use(cache, "b")  # one slot: "a" is evicted to the CPU tier, copied out of its slot
    back = cache.acquire("a", 1)
    expected = loader("a", 1).lora["0"]
    layer = layers.layers["0"]
    assert torch.equal(layer.lora_a[back.slot, :1], expected[0])
    assert torch.equal(layer.lora_b[back.slot, :, :1], expected[1])
    cache.release(back)


# ---------------------------------------------------------------- retire (delete ordering)
def test_retire_hides_with_no_load_in_progress_and_keeps_in_flight_copies() -> None:
    """A load that started before the DELETE finishes first; one after it finds nothing."""
    cache, loader, _metrics, layers = build()
    gone: set[tuple[str, int]] = set()
    loading, hidden = threading.Event(), threading.Event()
    real_call = Loader.__call__

    def slow_loader(self: Loader, name: str, version: int) -> AdapterWeights:
        if (name, version) in gone:
            raise SwitchyardError(404, "version_not_found", f"{name} v{version} is gone")
        loading.set()
        hidden.wait(0.2)  # the hide must wait for this load, not interleave with it
        assert not hidden.is_set()
        return real_call(self, name, version)

    cache.loader = slow_loader.__get__(loader)
    in_flight = cache.acquire("a", 1)  # a batch holds v1
    result: dict[str, object] = {}

    def load_v2() -> None:
        result["v2"] = cache.acquire("a", 2)

    thread = threading.Thread(target=load_v2)
    thread.start()
    loading.wait(5)

    def on_hidden() -> None:
        gone.update({("a", 1), ("a", 2)})
        hidden.set()

    cache.retire("a", [1, 2], on_hidden)
    thread.join()
    assert where(cache, "a") == ["disk"] and cache.residency("a", 2) == "disk"
    v2 = result["v2"]
    assert isinstance(v2, Resident) and v2.dropped  # its holder keeps it until release
    assert layers.layers["0"].lora_a[in_flight.slot].any()  # in flight: still readable
    cache.release(in_flight)
    cache.release(v2)
    assert cache.stats()["device_adapters"] == 0 and not layers.layers["0"].lora_a.any()
    with pytest.raises(SwitchyardError) as info:
        cache.acquire("a", 1)
    assert info.value.status == 404


def test_retire_drops_even_when_the_hide_fails() -> None:
    cache, _loader, _metrics, _layers = build()
    use(cache, "a")

    def broken_hide() -> None:
        raise OSError("rename failed")

    with pytest.raises(OSError):
        cache.retire("a", [1], broken_hide)
    assert where(cache, "a") == ["disk"]
    use(cache, "a")  # still stored: it simply loads again
    assert where(cache, "a") == ["device"]


def test_warm_loads_without_holding() -> None:
    cache, loader, _metrics, _layers = build()
    cache.warm("a", 1)
    assert where(cache, "a") == ["device"] and loader.calls == [("a", 1)]
    assert all(r.refs == 0 for r in cache._device.values())
