"""Typed references: what plain mypy --strict checks in a user's module, and what comes back.

The mypy tests type-check a user module in a directory outside the repo,
against an installed copy of the package (a wheel unpacked into a fresh
venv's site-packages) and against an editable one (installed into a fresh
venv as the Makefile installs it), with no plugin.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import zipfile
from decimal import Decimal
from pathlib import Path

import pytest
from celery.exceptions import TimeoutError as CeleryTimeout

from entities import EntityError, EntityResult, ReplyTimeout, UnknownHandler
from tests.client_entities import Wallet
from tests.delivery import REPLY_TIMEOUT_S
from tests.fixture_entities import Counter

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

USER_MODULE = textwrap.dedent(
    """\
    from decimal import Decimal

    from entities import Entity, handler


    class Shop(Entity, name="typing-shop"):
        items: dict[str, int] = {}

        @handler
        def add_item(self, name: str, quantity: int = 1) -> int:
            return quantity

        @handler
        def total(self) -> Decimal:
            return Decimal("1.10")


    async def use() -> None:
        shop = Shop.ref("s1")
        reveal_type(shop.add_item("apple", 3))
        reveal_type(shop.add_item.delay("apple"))
        reveal_type(shop.add_item.delay("apple").get(timeout=5))
        reveal_type(await shop.add_item.aio("apple", quantity=2))
        reveal_type(shop.total())
        shop.add_iten("apple", 3)
        shop.add_item("apple", "three")
        shop.add_item(3)
        shop.add_item("apple", amount=2)
        shop.total.delay(1)
    """
)

EXPECTED = [
    (20, "note", 'Revealed type is "int"'),
    (21, "note", 'Revealed type is "entities.results.EntityResult[int]"'),
    (22, "note", 'Revealed type is "int"'),
    (23, "note", 'Revealed type is "int"'),
    (24, "note", 'Revealed type is "decimal.Decimal"'),
    (25, "error", '"Shop" has no attribute "add_iten"'),
    (26, "error", 'Argument 2 to "__call__" of "BoundHandler" has incompatible type "str"'),
    (27, "error", 'Argument 1 to "__call__" of "BoundHandler" has incompatible type "int"'),
    (28, "error", 'Unexpected keyword argument "amount"'),
    (29, "error", 'Too many arguments for "delay" of "BoundHandler"'),
]


def _mypy(tmp_path: Path, python: Path) -> list[tuple[int, str, str]]:
    user = tmp_path / "user"
    user.mkdir()
    (user / "shop.py").write_text(USER_MODULE)
    proc = subprocess.run(
        [
            str(BIN / "mypy"),
            "--strict",
            "--no-incremental",
            "--python-executable",
            str(python),
            "shop.py",
        ],
        cwd=user,
        capture_output=True,
        text=True,
        timeout=300,
    )
    found = []
    for line in proc.stdout.splitlines():
        m = re.match(r"shop\.py:(\d+): (error|note): (.*)", line)
        if m:
            found.append((int(m.group(1)), m.group(2), m.group(3)))
    assert found, proc.stdout + proc.stderr
    return found


def _venv(tmp_path: Path) -> tuple[Path, Path]:
    """A fresh venv without pip (quick); its python and site-packages."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = venv.glob("lib/python*/site-packages")
    return venv / "bin" / "python", site


def _check(found: list[tuple[int, str, str]]) -> None:
    for line, kind, text in EXPECTED:
        assert any(f[0] == line and f[1] == kind and text in f[2] for f in found), (
            f"line {line}: expected {kind} {text!r}; mypy said:\n"
            + "\n".join(f"{f[0]}: {f[1]}: {f[2]}" for f in found)
        )
    errors = {f[0] for f in found if f[1] == "error"}
    assert errors == {line for line, kind, _ in EXPECTED if kind == "error"}, found


@pytest.mark.no_services
@pytest.mark.timeout(600)
def test_mypy_strict_checks_calls_through_a_reference_of_an_installed_copy(
    tmp_path: Path,
) -> None:
    """Given the package installed from its wheel, when mypy --strict checks a user module
    outside the repo, then a ref call has the handler's reply type (the result's .get() and
    the await too), and a misspelled handler or a wrong argument is an error."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
        timeout=300,
    )
    python, site = _venv(tmp_path)
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:  # what installing a wheel does, in essence
        archive.extractall(site)
    assert (site / "entities" / "py.typed").exists()
    _check(_mypy(tmp_path, python))


@pytest.mark.no_services
@pytest.mark.timeout(600)
def test_mypy_strict_checks_calls_through_a_reference_of_an_editable_copy(
    tmp_path: Path,
) -> None:
    """Given the package installed editable as the Makefile installs it, when mypy --strict
    checks a user module outside the repo, then it reports the same types and errors."""
    makefile = (ROOT / "Makefile").read_text()
    mode = re.search(r"^EDITABLE := (.*)$", makefile, re.M)
    assert mode is not None
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    options = mode.group(1).split()
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", *options, "-e", str(ROOT)],
        check=True,
        timeout=300,
    )
    _check(_mypy(tmp_path, python))


@pytest.mark.no_services
def test_a_handler_called_on_the_entity_itself_runs_in_place() -> None:
    """Given an entity object, when its own code calls a handler, then it runs in place and
    .delay/.aio explain that sending goes through a reference."""
    wallet = Wallet("w")
    assert wallet.deposit("1.5") == Decimal("1.5")
    assert Wallet.deposit(wallet, "1") == Decimal("2.5")
    with pytest.raises(TypeError, match="reference"):
        wallet.deposit.delay("1")


@pytest.mark.no_services
def test_a_reference_reaches_handlers_only() -> None:
    """Given a reference, when a state field is read on it, then UnknownHandler says so."""
    with pytest.raises(UnknownHandler, match="handlers only"):
        Wallet.ref("w").balance  # noqa: B018


def test_a_typed_reference_decodes_the_reply_by_the_return_annotation(workers) -> None:  # type: ignore[no-untyped-def]
    """Given handlers returning a Decimal and a tuple[Decimal, float], when called through a
    reference, then the replies are of those types (also through .delay().get()); a bare
    AsyncResult of the same task keeps the reply's JSON form (a list, an int)."""
    from workers import app

    workers.start(1)
    assert Wallet.ref("w1").deposit("1.10") == Decimal("1.10")
    pending = Wallet.ref("w1").deposit.delay("0.05")
    assert isinstance(pending, EntityResult)
    reply = pending.get(timeout=REPLY_TIMEOUT_S)
    assert reply == Decimal("1.15") and isinstance(reply, Decimal)
    typed = Wallet.ref("w1").balances.delay()
    assert typed.get(timeout=REPLY_TIMEOUT_S) == (Decimal("1.15"), 2.0)
    assert isinstance(typed.get(timeout=REPLY_TIMEOUT_S)[1], float)
    bare = app.AsyncResult(typed.id).get(timeout=REPLY_TIMEOUT_S)
    assert bare == [Decimal("1.15"), 2] and isinstance(bare[1], int)


def test_every_result_times_out_with_a_reply_timeout_naming_the_call() -> None:
    """Given no worker running, when a reference call, its .delay().get(), send_to_entity's
    result and entities.delete wait, then each raises ReplyTimeout (an EntityError and
    Celery's TimeoutError) naming entity, op, task id and what to check."""
    from entities import delete
    from workers import send_to_entity

    with pytest.raises(ReplyTimeout) as caught:
        Counter.ref("late", timeout=0.3).increment(1)
    text = str(caught.value)
    assert "counter 'late'" in text and "'increment'" in text and "entities stats" in text
    assert isinstance(caught.value, EntityError) and isinstance(caught.value, CeleryTimeout)

    pending = Counter.ref("late").increment.delay(1)
    with pytest.raises(ReplyTimeout, match=pending.id):
        pending.get(timeout=0.2)

    sent = send_to_entity.delay("counter", "late", {"op": "get"})
    assert isinstance(sent, EntityResult)
    with pytest.raises(ReplyTimeout, match=f"counter 'late' to 'get'.*{sent.id}"):
        sent.get(timeout=0.2)

    # Celery's own publish path (an option the direct path does not take) too
    later = send_to_entity.apply_async(("counter", "late", {"op": "get"}), headers={"x": "1"})
    assert isinstance(later, EntityResult)
    with pytest.raises(ReplyTimeout, match="counter 'late' to 'get'"):
        later.get(timeout=0.2)

    with pytest.raises(ReplyTimeout, match=r"counter 'late' to '\S*delete"):
        delete("counter", "late", timeout=0.2)
