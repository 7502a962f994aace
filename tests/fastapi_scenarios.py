"""Scenarios of examples/fastapi_app.py, run in a process of their own by
tests/test_fastapi_example.py (the examples package defines a "counter" type, as the
tests' own entities do, so the two never share a process)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from decimal import Decimal

import httpx

from entities import aio
from examples.fastapi_app import app


async def served(main: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        try:
            await main(client)
        finally:
            await aio.aclose()


async def concurrent(client: httpx.AsyncClient) -> None:
    posts = [
        client.post(f"/accounts/{name}/deposit", params={"amount": "0.10"})
        for _ in range(100)
        for name in ("alice", "bob")
    ]
    replies = await asyncio.gather(*posts)
    assert all(r.status_code == 200 for r in replies), replies[0].text
    alice = sorted(Decimal(r.json()["balance"]) for r in replies if r.json()["account"] == "alice")
    assert alice == [Decimal(n) / 10 for n in range(1, 101)], alice
    got = await client.get("/accounts/alice")
    assert got.json() == {"account": "alice", "balance": "10.00"}, got.text
    over = await client.post("/accounts/bob/withdraw", params={"amount": "99"})
    assert over.status_code == 409 and "less than 99" in over.json()["detail"], over.text
    assert (await client.get("/accounts/nobody")).status_code == 404


async def no_worker(client: httpx.AsyncClient) -> None:
    from entities import client as entities_client

    entities_client.DEFAULT_TIMEOUT_S = 0.3
    got = await client.post("/accounts/carol/deposit", params={"amount": "1"})
    assert got.status_code == 504, got.text
    assert "account 'carol' to 'deposit'" in got.json()["detail"], got.text


if __name__ == "__main__":
    import faulthandler

    faulthandler.dump_traceback_later(40, exit=True)
    asyncio.run(served({"concurrent": concurrent, "no_worker": no_worker}[sys.argv[1]]))
    print("scenario passed")
