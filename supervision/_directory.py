"""What a supervisor publishes for `Handle`s: its children's current incarnations.

The supervisor writes under the directory's condition; handles read without a
message to the supervisor, and wait on the condition while a restart is pending.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import pykka

__all__ = ["Directory", "Slot"]


@dataclass(slots=True)
class Slot:
    """One child as handles see it."""

    ref: pykka.ActorRef[Any] | None = None
    pending: bool = False  # a restart (or a restart decision) is under way
    directory: Directory | None = None  # the child's own, when it is a supervisor


class Directory:
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.condition = threading.Condition()
        self.slots: dict[str, Slot] = {}
        self.alive = True

    def update(self, child_id: str, *, ref: pykka.ActorRef[Any] | None, pending: bool, directory: Directory | None = None) -> None:
        with self.condition:
            slot = self.slots.get(child_id)
            if slot is None:
                slot = self.slots[child_id] = Slot()
            slot.ref, slot.pending, slot.directory = ref, pending, directory
            self.condition.notify_all()

    def exiting(self, child_id: str, ref: pykka.ActorRef[Any]) -> None:
        """The incarnation `ref` is ending: handles wait for the supervisor's decision."""
        with self.condition:
            slot = self.slots.get(child_id)
            if slot is not None and slot.ref is ref:
                slot.pending = True
                self.condition.notify_all()

    def remove(self, child_id: str) -> None:
        with self.condition:
            self.slots.pop(child_id, None)
            self.condition.notify_all()

    def close(self) -> None:
        """The supervisor is gone: nothing here will be restarted by it."""
        with self.condition:
            self.alive = False
            for slot in self.slots.values():
                slot.pending = False
            self.condition.notify_all()
