"""Entities that send to each other, to test what a sender sees of a refused message."""

from __future__ import annotations

from typing import Any

from entities import Entity, SendFailure, field, handler


class OutOfStock(Exception):
    """The inventory's own refusal."""


class Inventory(Entity, name="sends-inventory", durability="interval", flush_interval=0.2):
    """Refuses a reservation beyond its stock (a relaxed receiver)."""

    stock: int = 0
    reserved: dict[str, int] = field(default_factory=dict)

    @handler
    def restock(self, amount: int) -> int:
        self.stock += amount
        return self.stock

    @handler
    def reserve(self, order_id: str, amount: int) -> int:
        if amount > self.stock:
            raise OutOfStock(f"{amount} wanted, {self.stock} left")
        self.stock -= amount
        self.reserved[order_id] = amount
        return self.stock


class Checkout(Entity, name="sends-checkout"):
    """Reserves stock by message and compensates when the inventory refuses."""

    status: str = "new"
    refusals: list[str] = field(default_factory=list)

    @handler
    def checkout(self, sku: str, amount: int) -> str:
        self.status = "pending"
        self.send("sends-inventory", sku, {"op": "reserve", "args": [self.id, amount]})
        return self.status

    @handler
    def send_any(self, entity_type: str, msg: Any) -> str:
        self.status = "sent"
        self.send(entity_type, "x", msg)
        return self.status

    @handler
    def get(self) -> str:
        return self.status

    def handle_send_failed(self, failure: SendFailure) -> None:
        self.status = "failed"
        self.refusals.append(
            f"{failure.entity_type}:{failure.entity_id}:{failure.msg['op']}:"
            f"{failure.error_module}.{failure.error_type}:{failure.error}"
        )


class Blind(Entity, name="sends-blind"):
    """Sends without a handle_send_failed hook."""

    sent: int = 0

    @handler
    def checkout(self, sku: str, amount: int) -> int:
        self.sent += 1
        self.send("sends-inventory", sku, {"op": "reserve", "args": [self.id, amount]})
        return self.sent
