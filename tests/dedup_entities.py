"""Entities whose replies tell a first application from a second one.

Workers load them through ENTITIES_MODULES like every ``tests/*_entities.py``.
"""

from __future__ import annotations

from entities import Entity, handler


class InsufficientFunds(Exception):
    """A withdrawal larger than the balance."""


class Wallet(Entity, name="wallet"):
    """A balance whose withdrawals raise, or change nothing, once it is empty."""

    balance: int = 0

    @handler
    def deposit(self, amount: int) -> int:
        self.balance += amount
        return self.balance

    @handler
    def withdraw(self, amount: int) -> int:
        if amount > self.balance:
            raise InsufficientFunds(f"balance {self.balance} is less than {amount}")
        self.balance -= amount
        return self.balance

    @handler
    def withdraw_all(self) -> int:
        """Empties the wallet; returns how much it took (0, and no change, when empty)."""
        taken, self.balance = self.balance, 0
        return taken

    @handler
    def get(self) -> int:
        return self.balance
