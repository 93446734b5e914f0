"""What a supervisor publishes for `Handle`s: its children's current incarnations.

The supervisor writes under the directory's condition; handles read without a
message to the supervisor, and wait on the condition while a restart is pending.

A call through a `Handle` that reached an incarnation too late (it was killed or is
restarting) is *parked* in its child's slot instead of waking its caller: the
supervisor hands parked calls to the next incarnation's inbox before starting it,
so they are the first thing it handles after `on_start`. If no incarnation will
come (the child is gone for good, or the supervisor stops), each parked call gets
its `Undelivered` back and its caller decides (`ChildNotFound`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

import pykka

__all__ = ["Directory", "ParkedCall", "Slot"]


class ParkedCall(Protocol):
    """A call waiting in a slot for the next incarnation (a `Handle`'s future)."""

    def deliver(self, ref: pykka.ActorRef[Any]) -> None: ...

    def give_back(self) -> None: ...


@dataclass(slots=True)
class Slot:
    """One child as handles see it."""

    ref: pykka.ActorRef[Any] | None = None
    pending: bool = False  # a restart (or a restart decision) is under way
    directory: Directory | None = None  # the child's own, when it is a supervisor
    parked: list[ParkedCall] = field(default_factory=list)

    @property
    def is_live(self) -> bool:
        return self.ref is not None and not self.ref.actor_stopped.is_set()

    @property
    def may_come_back(self) -> bool:
        """A restart is pending, or the incarnation is ending and no decision is made yet."""
        return self.pending or self.ref is not None


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
            if slot.parked:
                if slot.is_live:
                    self._deliver(slot, slot.ref)  # type: ignore[arg-type]
                elif not slot.may_come_back:
                    self._give_back(slot)
            self.condition.notify_all()

    def exiting(self, child_id: str, ref: pykka.ActorRef[Any]) -> None:
        """The incarnation `ref` is ending: handles wait for the supervisor's decision."""
        with self.condition:
            slot = self.slots.get(child_id)
            if slot is not None and slot.ref is ref:
                slot.pending = True
                self.condition.notify_all()

    def hand_over(self, child_id: str, ref: pykka.ActorRef[Any]) -> None:
        """Queue the calls parked for `child_id` in the inbox of `ref`, not started yet."""
        with self.condition:
            slot = self.slots.get(child_id)
            if slot is not None and slot.parked:
                self._deliver(slot, ref)

    def park(self, child_id: str, call: ParkedCall) -> bool:
        """Keep `call` for the next incarnation of `child_id`; False if none will come.

        If an incarnation already runs, the call is delivered to it at once.
        """
        with self.condition:
            slot = self.slots.get(child_id)
            if not self.alive or slot is None:
                return False
            if slot.is_live:
                call.deliver(slot.ref)  # type: ignore[arg-type]
                return True
            if not slot.may_come_back:
                return False
            slot.parked.append(call)
            return True

    def unpark(self, child_id: str, call: ParkedCall) -> bool:
        """Take `call` back (its caller gave up); False if it was delivered meanwhile."""
        with self.condition:
            slot = self.slots.get(child_id)
            if slot is None or call not in slot.parked:
                return False
            slot.parked.remove(call)
            return True

    def remove(self, child_id: str) -> None:
        with self.condition:
            slot = self.slots.pop(child_id, None)
            if slot is not None:
                self._give_back(slot)
            self.condition.notify_all()

    def close(self) -> None:
        """The supervisor is gone: nothing here will be restarted by it."""
        with self.condition:
            self.alive = False
            for slot in self.slots.values():
                slot.pending = False
                self._give_back(slot)
            self.condition.notify_all()

    @staticmethod
    def _deliver(slot: Slot, ref: pykka.ActorRef[Any]) -> None:
        calls, slot.parked = slot.parked, []
        for call in calls:
            call.deliver(ref)  # a closed inbox parks it again: the condition is re-entrant

    @staticmethod
    def _give_back(slot: Slot) -> None:
        calls, slot.parked = slot.parked, []
        for call in calls:
            call.give_back()
