"""Residency: which adapters sit in device slots, which in CPU memory, which only on disk.

Device slots are an LRU cache bounded by bytes and slot count; pinned adapters are never
evicted. Evicted adapters drop to a CPU tier (also LRU by bytes) so that coming back costs a
copy, not a file read. Acquire/release are counted (SGLang's registry does the same): an
adapter in use is never evicted or freed under a running batch, and a load that fails leaves
no trace because nothing is recorded until the copy into the slot has succeeded.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from app.errors import SwitchyardError
from app.registry.records import AdapterRef
from app.registry.weights import AdapterWeights
from app.runtime.layers import LayerSet, needs_slot
from app.runtime.metrics import Metrics

Loader = Callable[[str, int], AdapterWeights]


@dataclass
class Resident:
    """An adapter on the device: its slot, its head on the device, and who is using it."""

    key: AdapterRef
    weights: AdapterWeights
    slot: int  # 0 for head-only adapters, which need no slot
    nbytes: int
    pinned: bool = False
    refs: int = 0
    dropped: bool = False  # deleted while in use: freed at the last release
    lora_in_slot: bool = False  # its LoRA lives only in the slot (CPU device)
    head: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class CacheLimits:
    """Budgets of the two tiers; from Settings."""

    max_slots: int
    device_bytes: int
    cpu_bytes: int


class AdapterCache:
    """Thread-safe residency manager over a `LayerSet`'s slots."""

    def __init__(
        self,
        layers: LayerSet | None,
        loader: Loader,
        *,
        limits: CacheLimits,
        device: torch.device,
        metrics: Metrics,
        is_pinned: Callable[[str], bool] = lambda _name: False,
    ) -> None:
        self.layers = layers
        self.loader = loader
        self.limits = limits
        self.device = device
        self.metrics = metrics
        self.is_pinned = is_pinned
        self._lock = threading.RLock()
        self._device: OrderedDict[AdapterRef, Resident] = OrderedDict()
        self._cpu: OrderedDict[AdapterRef, AdapterWeights] = OrderedDict()
        self._free_slots: list[int] = []
        self._next_slot = 1

    # ---------------------------------------------------------------- public
    def acquire(self, name: str, version: int) -> Resident:
        """Make (name, version) resident if needed and count one user of it."""
        key = AdapterRef(name, version)
        with self._lock:
            resident = self._device.get(key)
            if resident is None:
                resident = self._load(key)
            self._device.move_to_end(key)
            resident.refs += 1
            return resident

    def release(self, resident: Resident) -> None:
        """One user is done; a dropped adapter is freed when its last user leaves."""
        with self._lock:
            resident.refs -= 1
            if resident.dropped and resident.refs == 0:
                self._free(resident)

    def drop(self, name: str, version: int | None = None) -> None:
        """Forget an adapter (deleted from the store): free now, or at its last release."""
        with self._lock:
            for key in [k for k in self._cpu if k[0] == name and version in (None, k[1])]:
                del self._cpu[key]
            for key, resident in list(self._device.items()):
                if key[0] == name and version in (None, key[1]):
                    del self._device[key]
                    resident.dropped = True
                    if resident.refs == 0:
                        self._free(resident)
            self._update_gauges()

    def retire(self, name: str, versions: list[int], hide: Callable[[], object]) -> None:
        """Delete ordering: run `hide` (the store's renames) with no load in progress, then
        drop `versions` of `name`.

        Loads run under this lock too, so none reads a version while it leaves the store, and
        none can commit a copy after the drop; a later load finds the version gone (a 404).
        Residents in use are freed at their last release: in-flight batches keep their copy.
        The drop happens even when `hide` fails part-way: forgetting a version that is still
        stored only costs a reload.
        """
        with self._lock:
            try:
                hide()
            finally:
                for version in versions:
                    self.drop(name, version)

    def warm(self, name: str, version: int) -> None:
        """Load (name, version) onto the device now, as a PATCH pin does."""
        self.release(self.acquire(name, version))

    def set_pinned(self, name: str, pinned: bool) -> None:
        """Pin the newest resident version of `name` (unpinning older ones), or unpin all."""
        with self._lock:
            versions = [key[1] for key in self._device if key[0] == name]
            for key, resident in self._device.items():
                if key[0] == name:
                    resident.pinned = pinned and key[1] == max(versions)

    def residency(self, name: str, version: int) -> str:
        """`device`, `cpu` or `disk`."""
        with self._lock:
            if (name, version) in self._device:
                return "device"
            return "cpu" if (name, version) in self._cpu else "disk"

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "device_adapters": len(self._device),
                "device_bytes": sum(r.nbytes for r in self._device.values()),
                "cpu_adapters": len(self._cpu),
                "cpu_bytes": sum(w.nbytes for w in self._cpu.values()),
                "slot_capacity": self.layers.slot_capacity if self.layers else 0,
            }

    # ---------------------------------------------------------------- internals
    def _load(self, key: AdapterRef) -> Resident:
        weights = self._cpu.pop(key, None)
        source = "cpu"
        if weights is None:
            weights, source = self.loader(*key), "disk"
        try:
            resident = self._place(key, weights)
        except BaseException:
            if source == "cpu":
                self._cpu[key] = weights  # nothing changed: put it back where it was
            raise
        self.metrics.loads.labels(adapter=key[0], source=source).inc()
        self._update_gauges()
        return resident

    def _place(self, key: AdapterRef, weights: AdapterWeights) -> Resident:
        nbytes = weights.nbytes
        # LoRA, IA3, prompt and prefix adapters change the forward: they take a slot.
        slotted = needs_slot(weights)
        self._make_room(nbytes, needs_slot=slotted)
        slot = self._take_slot(weights.rank) if slotted else 0
        try:
            if slotted and self.layers is not None:
                self.layers.load(slot, weights)
            head = {k: v.to(self.device) for k, v in weights.head.items()}
        except BaseException:
            self._return_slot(slot)
            raise
        # A pin holds the newest resident version only: otherwise every new version of a pinned
        # adapter would keep a slot forever, until no slot is left for anyone.
        siblings = {k[1]: r for k, r in self._device.items() if k[0] == key[0]}
        pinned = self.is_pinned(key[0]) and all(v < key[1] for v in siblings)
        if pinned:
            for older in siblings.values():
                older.pinned = False
        lora_in_slot = bool(weights.lora) and self.device.type == "cpu"
        if lora_in_slot:
            # On a CPU device the slot already is a host copy: keeping the file's tensors too
            # would hold every resident adapter twice. Eviction copies them back out.
            weights = dataclasses.replace(weights, lora={})
        resident = Resident(
            key=key,
            weights=weights,
            slot=slot,
            nbytes=nbytes,
            pinned=pinned,
            head=head,
            lora_in_slot=lora_in_slot,
        )
        self._device[key] = resident
        return resident

    def _make_room(self, nbytes: int, *, needs_slot: bool) -> None:
        limits = self.limits
        if nbytes > limits.device_bytes:
            raise SwitchyardError(
                507,
                "adapter_too_large",
                f"adapter needs {nbytes} bytes > device budget {limits.device_bytes}",
            )
        while True:
            used = sum(r.nbytes for r in self._device.values())
            slots_used = sum(1 for r in self._device.values() if r.slot)
            if used + nbytes <= limits.device_bytes and (
                not needs_slot or slots_used < limits.max_slots
            ):
                return
            if not self._evict_one():
                raise SwitchyardError(
                    429,
                    "no_free_slot",
                    f"all {slots_used} slots / {used} bytes are pinned or in use; retry shortly",
                    headers={"Retry-After": "1"},
                )

    def _evict_one(self) -> bool:
        for key, resident in self._device.items():  # oldest first
            if resident.refs == 0 and not resident.pinned:
                del self._device[key]
                weights = resident.weights
                if resident.lora_in_slot and self.layers is not None:
                    weights = dataclasses.replace(
                        weights, lora=self.layers.extract_lora(resident.slot)
                    )
                self._free(resident)
                self._cpu[key] = weights
                self._trim_cpu()
                self.metrics.evictions.labels(adapter=key[0], tier="device").inc()
                return True
        return False

    def _trim_cpu(self) -> None:
        while self._cpu and sum(w.nbytes for w in self._cpu.values()) > self.limits.cpu_bytes:
            key, _ = self._cpu.popitem(last=False)
            self.metrics.evictions.labels(adapter=key[0], tier="cpu").inc()

    def _take_slot(self, rank: int) -> int:
        slot = self._free_slots.pop() if self._free_slots else self._next_slot
        if slot == self._next_slot:
            self._next_slot += 1
        if self.layers is not None:
            # Grow capacity by a quarter (at least 8 slots) so a stream of new adapters
            # reallocates rarely while at most a quarter of the slot memory sits idle.
            want = slot + 1
            if want > self.layers.slot_capacity:
                grown = max(want, self.layers.slot_capacity * 5 // 4, self.layers.slot_capacity + 8)
                want = min(grown, self.limits.max_slots + 1)
            self.layers.ensure(max(want, slot + 1), rank)
        return slot

    def _return_slot(self, slot: int) -> None:
        if slot:
            self._free_slots.append(slot)

    def _free(self, resident: Resident) -> None:
        if resident.slot and self.layers is not None:
            self.layers.clear(resident.slot)
        self._return_slot(resident.slot)
        resident.slot = -1
        self._update_gauges()

    def _update_gauges(self) -> None:
        stats = self.stats()
        self.metrics.resident_bytes.labels(tier="device").set(stats["device_bytes"])
        self.metrics.resident_bytes.labels(tier="cpu").set(stats["cpu_bytes"])
        self.metrics.resident_adapters.labels(tier="device").set(stats["device_adapters"])
        self.metrics.resident_adapters.labels(tier="cpu").set(stats["cpu_adapters"])
