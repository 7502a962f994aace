"""A FastAPI service in front of entities: every request awaits its entity's reply.

Run a worker and the service (uvicorn is not a dependency; install it)::

    ENTITIES_MODULES=examples.account celery -A workers worker
    ENTITIES_MODULES=examples.account uvicorn examples.fastapi_app:app

    curl -X POST 'localhost:8000/accounts/alice/deposit?amount=10.50'

Each handler awaits ``Account.ref(id).<handler>.aio(...)``: no thread per
request, so one process serves thousands of requests in flight. mypy checks
each call against the handler's signature. A client that disconnects cancels
its request's await, not the message: a deposit already sent is applied.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from entities import ReplyTimeout, aio
from examples.account import Account, InsufficientFunds


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    yield
    await aio.aclose()  # the loop's Redis connections


app = FastAPI(title="accounts", lifespan=lifespan)


@app.post("/accounts/{account_id}/deposit")
async def deposit(account_id: str, amount: str, memo: str = "") -> dict[str, str]:
    """Deposits ``amount``; replies with the new balance once it is committed."""
    try:
        balance = await Account.ref(account_id).deposit.aio(amount, memo)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return {"account": account_id, "balance": balance}


@app.post("/accounts/{account_id}/withdraw")
async def withdraw(account_id: str, amount: str, memo: str = "") -> dict[str, str]:
    """Withdraws ``amount``; 409 if the balance is too small."""
    try:
        balance = await Account.ref(account_id).withdraw.aio(amount, memo)
    except InsufficientFunds as exc:
        raise HTTPException(409, str(exc)) from None
    return {"account": account_id, "balance": balance}


@app.get("/accounts/{account_id}")
async def balance(account_id: str) -> dict[str, str]:
    """The committed balance, read from the store without waiting behind queued messages;
    404 for an account never written."""
    snapshot = await aio.read(Account, account_id)
    if snapshot is None:
        raise HTTPException(404, f"no account {account_id!r}")
    account = Account.from_state(account_id, snapshot.state)
    return {"account": account_id, "balance": str(account.balance)}


@app.exception_handler(ReplyTimeout)
async def reply_timeout(_: Request, exc: ReplyTimeout) -> JSONResponse:
    """No reply in time: 504, saying the message may still be applied."""
    return JSONResponse({"detail": str(exc)}, status_code=504)
