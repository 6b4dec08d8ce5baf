"""What the backends hold, as one reaper pass listed it, looked up by reference and by instance.

A pass compares every live row with the listing: looking each row up in a list of every object made
a pass cost rows times objects, minutes at a hundred thousand instances. The lookups here keep the
listing's order, so the first object found is the one a scan of the list would have found.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from ..backends import BackendRegistry, ManagedObject
from ..errors import PostgraasError

log = logging.getLogger(__name__)


class Listing:
    def __init__(self, listed: dict[str, list[ManagedObject] | None]) -> None:
        # None: the backend could not be listed this pass, and nothing of it is judged.
        self._listed = listed
        # Per backend, built when first asked for: most passes ask only for ``held``.
        self._first: dict[str, dict[tuple[str, int], ManagedObject]] = {}
        self._by_ref: dict[str, dict[str, list[ManagedObject]]] = {}
        self._by_instance: dict[str, dict[int, list[ManagedObject]]] = {}

    @classmethod
    def of(cls, backends: BackendRegistry) -> Listing:
        listed: dict[str, list[ManagedObject] | None] = {}
        for name, backend in backends.backends.items():
            try:
                listed[name] = backend.list_objects()
            except PostgraasError as e:
                log.warning("reaper: cannot list backend %s, skipping it this pass: %s", name, e.msg)
                listed[name] = None
        return cls(listed)

    def items(self) -> Iterator[tuple[str, list[ManagedObject]]]:
        """Each backend with what it holds (nothing, where it could not be listed)."""
        for name, objects in self._listed.items():
            yield name, objects or []

    def answered(self) -> list[str]:
        """The backends that could be listed this pass."""
        return [name for name, objects in self._listed.items() if objects is not None]

    def with_ports(self) -> list[str]:
        """The backends that say where an object of theirs listens."""
        return [name for name, objects in self._listed.items() if any(o.port is not None for o in objects or [])]

    def count(self) -> int:
        return sum(len(objects or []) for objects in self._listed.values())

    def instance_ids(self) -> list[int]:
        return sorted({obj.instance_id for objects in self._listed.values() for obj in objects or []})

    def held(self, backend: str, ref: str, instance_id: int) -> ManagedObject | None:
        """The first object of ``backend`` with reference ``ref`` made for ``instance_id``."""
        if backend not in self._first:
            first: dict[tuple[str, int], ManagedObject] = {}
            for obj in self._listed.get(backend) or []:
                first.setdefault((obj.ref, obj.instance_id), obj)
            self._first[backend] = first
        return self._first[backend].get((ref, instance_id))

    def with_ref(self, backend: str, ref: str | None) -> list[ManagedObject]:
        """The objects of ``backend`` with reference ``ref``, in the listing's order."""
        if ref is None:
            return []
        if backend not in self._by_ref:
            by_ref: dict[str, list[ManagedObject]] = {}
            for obj in self._listed.get(backend) or []:
                by_ref.setdefault(obj.ref, []).append(obj)
            self._by_ref[backend] = by_ref
        return self._by_ref[backend].get(ref, [])

    def of_instance(self, backend: str, instance_id: int) -> list[ManagedObject]:
        """The objects of ``backend`` made for ``instance_id``, in the listing's order."""
        if backend not in self._by_instance:
            by_instance: dict[int, list[ManagedObject]] = {}
            for obj in self._listed.get(backend) or []:
                by_instance.setdefault(obj.instance_id, []).append(obj)
            self._by_instance[backend] = by_instance
        return self._by_instance[backend].get(instance_id, [])
