"""A bank account with exact Decimal money and a history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal

from entities import Entity, field, handler


class InsufficientFunds(Exception):
    """A withdrawal larger than the balance."""


@dataclass
class Entry:
    amount: Decimal
    at: datetime
    memo: str = ""


class Account(Entity, name="account"):
    """Deposits and withdrawals; the balance never goes below zero."""

    balance: Decimal = Decimal("0")
    history: list[Entry] = field(default_factory=list)

    @handler
    def deposit(self, amount: str, memo: str = "") -> str:
        value = Decimal(amount)
        if value <= 0:
            raise ValueError(f"deposit must be positive, got {amount}")
        self.balance += value
        self.history.append(Entry(value, datetime.now(timezone.utc), memo))
        return str(self.balance)

    @handler
    def withdraw(self, amount: str, memo: str = "") -> str:
        value = Decimal(amount)
        if value <= 0:
            raise ValueError(f"withdrawal must be positive, got {amount}")
        if value > self.balance:
            raise InsufficientFunds(f"balance {self.balance} is less than {value}")
        self.balance -= value
        self.history.append(Entry(-value, datetime.now(timezone.utc), memo))
        return str(self.balance)

    @handler
    def balance_of(self) -> str:
        return str(self.balance)
