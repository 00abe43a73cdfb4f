"""Serialization: typed JSON round trips through the database, refusal of bad input, stored exceptions, pickle."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel

import perdure
from perdure import Perdure, SerializationError, WorkflowError, WorkflowStatus, step, workflow

RUNS: Counter[str] = Counter()
SEEN: list[object] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    RUNS.clear()
    SEEN.clear()


class Item(BaseModel):
    name: str
    qty: int


@dataclass
class Box:
    label: str
    packed_at: datetime


class Shipment(BaseModel):
    items: list[Item]
    box: Box
    when: datetime


WHEN = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)


@step
async def pack(items: list[Item], label: str) -> Box:
    RUNS["pack"] += 1
    return Box(label=f"{label}:{len(items)}", packed_at=WHEN + timedelta(hours=1))


@step
async def restock(items: list[Item]) -> list[Item]:
    RUNS["restock"] += 1
    return [Item(name=i.name, qty=i.qty + 1) for i in items]


@workflow
async def ship(items: list[Item], when: datetime, box: Box | None = None) -> Shipment:
    SEEN.extend([items, when, box])
    packed = await pack(items, "box")
    more = await restock(items)
    SEEN.extend([packed, more])
    return Shipment(items=more, box=box or packed, when=when)


@workflow
async def restocked(items: list[Item]) -> list[Item]:
    return await restock(items)


ITEMS = [Item(name="apple", qty=2), Item(name="pear", qty=5)]


async def test_models_dataclasses_and_datetimes_come_back_typed_from_the_database(app: Perdure, db_url: str) -> None:
    h = await app.start(ship, ITEMS, WHEN, box=Box(label="given", packed_at=WHEN), workflow_id="ship")
    live = await h.result()
    assert isinstance(live, Shipment)

    # The stored row is readable JSON.
    info = await app.get_workflow("ship")
    assert json.loads(info.inputs or "") == {
        "items": [{"name": "apple", "qty": 2}, {"name": "pear", "qty": 5}],
        "when": "2024-05-06T07:08:09.123000Z",
        "box": {"label": "given", "packed_at": "2024-05-06T07:08:09.123000Z"},
    }
    assert json.loads(info.output or "")["items"][0] == {"name": "apple", "qty": 3}

    # A fresh client reads the result back from the database, typed by the workflow's annotations.
    async with perdure.Client(db_url) as client:
        stored = await (await client.retrieve("ship")).result()
    assert isinstance(stored, Shipment)
    assert stored == live
    assert all(isinstance(i, Item) for i in stored.items)
    assert isinstance(stored.box, Box)
    assert stored.box == Box(label="given", packed_at=WHEN)
    assert stored.when == WHEN and stored.when.tzinfo is not None

    # So does the runtime for a finished workflow (no live run to hand the value over).
    again = await (await app.retrieve("ship")).result()
    assert again == live


async def test_list_of_models_result_and_step_outputs_are_typed_on_replay(app: Perdure) -> None:
    h = await app.start(restocked, ITEMS, workflow_id="rs")
    assert await h.result() == [Item(name="apple", qty=3), Item(name="pear", qty=6)]
    stored = await (await app.retrieve("rs")).result()
    assert [type(i) for i in stored] == [Item, Item]

    # Replaying the recorded steps loads their outputs back as the annotated types, without running them.
    h2 = await app.start(ship, ITEMS, WHEN, workflow_id="ship2")
    await h2.result()
    SEEN.clear()
    fork = await app.fork("ship2", from_step=2)
    result = await fork.result()
    assert RUNS["pack"] == 1 and RUNS["restock"] == 2  # restock ran for "rs" and for "ship2" only
    items, when, box, packed, more = SEEN
    assert [type(i) for i in items] == [Item, Item]  # the inputs, loaded from the row
    assert isinstance(when, datetime) and when == WHEN
    assert box is None
    assert isinstance(packed, Box) and packed.packed_at == WHEN + timedelta(hours=1)
    assert [type(i) for i in more] == [Item, Item]
    assert result.box == packed


class Opaque:
    def __init__(self, value: int) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.value == self.value

    __hash__ = None  # type: ignore[assignment]


@workflow
async def takes_anything(count: int, thing, label: str = "x") -> int:  # type: ignore[no-untyped-def]
    RUNS["takes_anything"] += 1
    return count


async def test_unserializable_argument_is_refused_naming_it_and_nothing_is_written(app: Perdure) -> None:
    with pytest.raises(SerializationError, match="'thing'") as info:
        await takes_anything(1, Opaque(1))
    assert "takes_anything" in str(info.value)
    with pytest.raises(SerializationError, match="'thing'"):
        await app.start(takes_anything, 1, thing=Opaque(2), workflow_id="bad-args")
    assert RUNS["takes_anything"] == 0
    assert await app.list_workflows() == []
    # The refused id stays free.
    assert await (await app.start(takes_anything, 3, [1, 2], workflow_id="bad-args")).result() == 3


async def test_unserializable_argument_writes_no_row_in_sqlite(sqlite_url: str) -> None:
    async with Perdure(sqlite_url, maintenance_interval=0.05):
        with pytest.raises(SerializationError, match="'thing'"):
            await takes_anything(1, Opaque(1))
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM workflows").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM steps").fetchone()[0] == 0


@workflow
async def returns_opaque() -> Opaque:
    RUNS["returns_opaque"] += 1
    return Opaque(1)


@step
async def step_returns_opaque():  # type: ignore[no-untyped-def]
    RUNS["step_returns_opaque"] += 1
    return Opaque(2)


@workflow
async def calls_opaque_step() -> str:
    try:
        await step_returns_opaque()
    except SerializationError as exc:
        return f"refused: {'step_returns_opaque' in str(exc)}"
    return "stored"


async def test_unserializable_results_are_refused(app: Perdure) -> None:
    h = await app.start(returns_opaque, workflow_id="ro")
    with pytest.raises(SerializationError):
        await h.result()
    info = await app.get_workflow("ro")
    assert info.status == WorkflowStatus.ERROR
    assert info.output is None
    assert info.error is not None and info.error.startswith("SerializationError:")

    h2 = await app.start(calls_opaque_step, workflow_id="cos")
    assert await h2.result() == "refused: True"
    assert await app.list_steps("cos") == []  # the step's outcome was not written


# -- exceptions -----------------------------------------------------------------------------------------


class PaymentDeclined(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class KeywordOnly(Exception):
    def __init__(self, *, code: int) -> None:
        super().__init__(f"code={code}")
        self.code = code


@workflow
async def declines(code: int) -> None:
    raise PaymentDeclined(code, "card expired")


@workflow
async def raises_keyword_only() -> None:
    raise KeywordOnly(code=7)


@workflow
async def raises_value_error() -> None:
    raise ValueError("bad value")


async def test_workflow_exception_is_reraised_as_its_original_type(app: Perdure, db_url: str) -> None:
    h = await app.start(declines, 402, workflow_id="pay")
    with pytest.raises(PaymentDeclined) as live:
        await h.result()
    assert live.value.code == 402

    info = await app.get_workflow("pay")
    assert info.status == WorkflowStatus.ERROR
    assert info.error == "PaymentDeclined: (402, 'card expired')"
    assert info.error_traceback is not None and "declines" in info.error_traceback

    async with perdure.Client(db_url) as client:
        with pytest.raises(PaymentDeclined) as stored:
            await (await client.retrieve("pay")).result()
    assert stored.value.code == 402
    assert stored.value.reason == "card expired"

    h2 = await app.start(raises_value_error, workflow_id="ve")
    with pytest.raises(ValueError, match="bad value"):
        await h2.result()
    with pytest.raises(ValueError, match="bad value"):
        await (await app.retrieve("ve")).result()


async def test_exception_with_another_constructor_keeps_its_type(app: Perdure, db_url: str) -> None:
    h = await app.start(raises_keyword_only, workflow_id="kw")
    with pytest.raises(KeywordOnly):
        await h.result()  # the live run hands over the original object
    async with perdure.Client(db_url) as client:
        with pytest.raises(KeywordOnly, match="code=7") as info:
            await (await client.retrieve("kw")).result()
    assert any("raises_keyword_only" in note for note in getattr(info.value, "__notes__", []))


class CarriesObject(Exception):
    pass


@workflow
async def raises_with_opaque_args() -> None:
    raise CarriesObject("no json here", Opaque(3))


async def test_exception_that_cannot_be_rebuilt_becomes_workflow_error(app: Perdure, db_url: str) -> None:
    h = await app.start(raises_with_opaque_args, workflow_id="opq")
    with pytest.raises(CarriesObject):
        await h.result()
    async with perdure.Client(db_url) as client:
        with pytest.raises(WorkflowError) as info:
            await (await client.retrieve("opq")).result()
    err = info.value
    assert err.type_name == "CarriesObject"
    assert err.message.startswith("('no json here', <")
    assert "raises_with_opaque_args" in err.traceback
    assert "CarriesObject" in err.traceback
    assert isinstance(err, perdure.PerdureError)
    assert (await app.get_workflow("opq")).error == f"CarriesObject: {err.message}"


async def test_exception_of_a_class_that_cannot_be_found_becomes_workflow_error(app: Perdure) -> None:
    class LocalOnly(Exception):
        pass

    @workflow
    async def raises_local() -> None:
        raise LocalOnly("somewhere local")

    h = await app.start(raises_local, workflow_id="local")
    with pytest.raises(LocalOnly):
        await h.result()
    with pytest.raises(WorkflowError, match="LocalOnly: somewhere local") as info:
        await (await app.retrieve("local")).result()
    assert info.value.type_name.endswith("LocalOnly")
    assert info.value.message == "somewhere local"


# -- pickle ---------------------------------------------------------------------------------------------


@workflow(serializer="pickle")
async def pickled(thing: Opaque) -> Opaque:
    return Opaque(thing.value + 1)


@step(serializer="pickle")
async def pickled_step(n: int) -> Opaque:
    RUNS["pickled_step"] += 1
    return Opaque(n)


@workflow
async def json_with_pickled_step(n: int) -> int:
    return (await pickled_step(n)).value


@workflow
async def json_takes_opaque(thing: Opaque) -> int:
    return thing.value


async def test_pickle_only_when_asked(app: Perdure, db_url: str) -> None:
    with pytest.raises(SerializationError):
        await app.start(json_takes_opaque, Opaque(1))
    assert await app.list_workflows() == []

    h = await app.start(pickled, Opaque(1), workflow_id="pk")
    assert await h.result() == Opaque(2)
    async with perdure.Client(db_url) as client:
        assert await (await client.retrieve("pk")).result() == Opaque(2)
    info = await app.get_workflow("pk")
    assert info.inputs is None and info.output is None  # not readable JSON, so not shown as such

    h2 = await app.start(json_with_pickled_step, 5, workflow_id="jps")
    assert await h2.result() == 5
    assert (await app.get_workflow("jps")).inputs == '{"n":5}'
    [s] = await app.list_steps("jps")
    with pytest.raises(ValueError):
        json.loads(s.output or "")
    fork = await app.fork("jps", from_step=1)
    assert await fork.result() == 5
    assert RUNS["pickled_step"] == 1


async def test_serializer_column_in_sqlite(sqlite_url: str) -> None:
    async with Perdure(sqlite_url, maintenance_interval=0.05) as app:
        await (await app.start(pickled, Opaque(1), workflow_id="pk")).result()
        await (await app.start(restocked, ITEMS, workflow_id="js")).result()
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        rows = dict(conn.execute("SELECT workflow_id, serializer FROM workflows").fetchall())
    assert rows == {"pk": "pickle", "js": "json"}


def test_unknown_serializer_is_refused() -> None:
    with pytest.raises(SerializationError, match="serializer"):

        @workflow(serializer="yaml")
        async def nope() -> None:
            return None
