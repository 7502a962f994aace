"""Entities for the client tests: typed replies that are not plain JSON."""

from __future__ import annotations

from decimal import Decimal

from entities import Entity, handler


class Wallet(Entity, name="typed_wallet"):
    """Exact money: ``deposit`` replies with the new balance as a Decimal."""

    balance: Decimal = Decimal("0")

    @handler
    def deposit(self, amount: str) -> Decimal:
        self.balance += Decimal(amount)
        return self.balance

    @handler
    def balances(self) -> tuple[Decimal, float]:
        return (self.balance, 2)
