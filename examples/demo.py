"""A short client for a running ``entities dev``: ``python -m examples.demo``.

It increments a Counter, deposits to and withdraws from an Account, prints
each reply (a commit receipt: the new state is already in Postgres), shows
a handler's error coming back to the caller, and reads the committed state
outside the queue. Stop the worker, start it again and rerun: the numbers
continue where they were.

Settings: the ENTITIES_* environment if set, else those recorded by the
``entities dev`` running in ./.entities/ (what ``entities env`` prints).
"""

from __future__ import annotations

import os
import sys

from entities.embedded import load_env
from entities.settings import from_env

#: Seconds to wait for each reply.
TIMEOUT_S = 10.0


def use_dev_settings() -> bool:
    """Fills unset ENTITIES_* variables from the running ``entities dev``; False if none runs."""
    recorded = load_env(from_env().home)
    if recorded is None:
        return False
    for name, value in recorded.items():
        os.environ.setdefault(name, value)
    return True


def main() -> int:
    if not use_dev_settings() and not os.environ.get("ENTITIES_BROKER_URL"):
        print(
            "no `entities dev` runs in ./.entities/: start one first (`make run`)", file=sys.stderr
        )
        return 1

    import entities
    from examples import Account, Counter
    from examples.account import InsufficientFunds
    from workers import send_to_entity

    # By type name, as any Celery client can:
    result = send_to_entity.delay("counter", "demo", {"op": "increment", "args": [5]})
    print(f"counter demo    increment(5)       -> {result.get(timeout=TIMEOUT_S)}")
    # Through the generated client, which sends and waits for the reply:
    print(f"counter demo    increment(1)       -> {Counter.ref('demo').increment(1)}")

    alice = Account.ref("alice")
    print(f"account alice   deposit('100.00')  -> {alice.deposit('100.00', memo='salary')}")
    print(f"account alice   withdraw('30.50')  -> {alice.withdraw('30.50', memo='rent')}")
    try:
        alice.withdraw("1000000")
    except InsufficientFunds as err:
        print(f"account alice   withdraw('1000000') raised InsufficientFunds: {err}")

    # Outside the queue: the last committed state, as stored (JSON).
    counter = entities.read("counter", "demo")
    account = entities.read(Account, "alice")
    assert counter is not None and account is not None
    print(f"read counter demo:  version {counter.version}, count {counter.state['count']}")
    print(
        f"read account alice: version {account.version}, balance {account.state['balance']}, "
        f"{len(account.state['history'])} history entries"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
