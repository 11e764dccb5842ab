import Foundation
import HarmonyTestSupport
import Testing

/// An application written for PostgreSQL with SQLAlchemy's ORM (its psycopg dialect, unchanged defaults): it makes
/// its tables with `create_all`, writes through one node and reads through another. SQLAlchemy sends `::` casts on
/// every parameter, SERIAL keys, `pg_catalog` lookups, `VALUES ... AS alias(columns)` and psycopg's binary dates.
let sqlalchemyClient = #"""
import datetime, decimal, sys, time, uuid
import psycopg
from sqlalchemy import (create_engine, select, update, delete, func, Column, Integer, BigInteger, String, Text, Numeric, DateTime,
                        Date, Time, Boolean, Float, LargeBinary, Uuid, JSON, ForeignKey)
from sqlalchemy.orm import DeclarativeBase, Session, relationship

password, p1, p3 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def engine(port):
    return create_engine(f"postgresql+psycopg://app:{password}@127.0.0.1:{port}/app", connect_args={"connect_timeout": 10})

class Base(DeclarativeBase): pass
class Account(Base):
    __tablename__ = "accounts"
    id = Column(Integer, primary_key=True)
    name = Column(String(50), nullable=False, unique=True)
    balance = Column(Numeric(12, 2))
    opened = Column(DateTime)
    opened_at = Column(DateTime(timezone=True))
    born = Column(Date)
    alarm = Column(Time)
    active = Column(Boolean, default=True)
    score = Column(Float)
    photo = Column(LargeBinary)
    token = Column(Uuid)
    settings = Column(JSON)
    entries = relationship("Entry", back_populates="account", order_by="Entry.id")
class Entry(Base):
    __tablename__ = "entries"
    id = Column(BigInteger, primary_key=True)
    account_id = Column(Integer, ForeignKey("accounts.id"), nullable=False)
    amount = Column(Numeric(12, 2), nullable=False)
    memo = Column(Text)
    account = relationship(Account, back_populates="entries")

TOKEN = uuid.UUID("12345678-9abc-def0-0123-456789abcdef")
UTC = datetime.timezone.utc
def expected():
    return [
        (1, "alice", decimal.Decimal("10.5"), datetime.datetime(2024, 1, 2, 3, 4, 5, 250), datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
         datetime.date(1990, 5, 6), datetime.time(7, 30), True, 1.5, b"\x00\x01\xff", TOKEN, {"theme": "dark", "n": [1, 2]}),
        (2, "bob", decimal.Decimal("7"), None, None, None, None, False, None, None, None, None),
    ]
def rows(s):
    return [(a.id, a.name, a.balance, a.opened, a.opened_at, a.born, a.alarm, a.active, a.score,
             bytes(a.photo) if a.photo is not None else None, a.token, a.settings)
            for a in s.scalars(select(Account).order_by(Account.id))]

def write():
    e = engine(p1)
    Base.metadata.create_all(e)  # asks has_table first, then CREATE TABLE with SERIAL keys
    Base.metadata.create_all(e)  # the tables exist now: nothing to do
    with Session(e) as s:
        alice = Account(name="alice", balance=decimal.Decimal("10.50"), opened=datetime.datetime(2024, 1, 2, 3, 4, 5, 250),
                        opened_at=datetime.datetime(2024, 1, 2, 5, 4, 5, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
                        born=datetime.date(1990, 5, 6), alarm=datetime.time(7, 30), score=1.5, photo=b"\x00\x01\xff",
                        token=TOKEN, settings={"theme": "dark", "n": [1, 2]})
        bob = Account(name="bob", balance=decimal.Decimal("7"), active=False)
        s.add_all([alice, bob])  # one INSERT ... SELECT FROM (VALUES ...) AS imp_sen(...) RETURNING
        s.flush()
        assert (alice.id, bob.id) == (1, 2), (alice.id, bob.id)
        s.add_all([Entry(account=alice, amount=decimal.Decimal("0.10"), memo="first"),
                   Entry(account=alice, amount=decimal.Decimal("99.99")), Entry(account=bob, amount=decimal.Decimal("-3"))])
        s.commit()
    with Session(e) as s:
        got = rows(s)
        assert got == expected(), got
        assert s.scalar(select(func.count()).select_from(Entry).where(Entry.amount > decimal.Decimal("0.5"))) == 1
        assert [a.name for a in s.scalars(select(Account).where(Account.opened_at < datetime.datetime(2024, 6, 1, tzinfo=UTC)))] == ["alice"]
        assert [x.memo for x in s.get(Account, 1).entries] == ["first", None]
        s.execute(update(Entry).where(Entry.amount < 0).values(memo="refund"))
        s.execute(delete(Entry).where(Entry.amount == decimal.Decimal("99.99")))
        s.commit()
    # A NUMERIC column holding an integer, then a fraction: psycopg parses both, in text and in binary.
    with psycopg.connect(host="127.0.0.1", port=p1, user="app", password=password, dbname="app", autocommit=True) as c:
        for binary in (False, True):
            got = c.cursor(binary=binary).execute("SELECT amount FROM entries ORDER BY id").fetchall()
            assert got == [(decimal.Decimal("0.1"),), (decimal.Decimal("-3"),)], (binary, got)
    print("write ok")

def read():
    e = engine(p3)
    deadline = time.time() + 30
    with Session(e) as s:
        while True:
            try:
                got = rows(s)
                memos = [x.memo for x in s.scalars(select(Entry).order_by(Entry.id))]
                if got == expected() and memos == ["first", "refund"]:
                    break
            except Exception as ex:
                s.rollback()
                got, memos = repr(ex), None
            assert time.time() < deadline, f"node 3 never had node 1's rows: {got} {memos}"
            s.rollback()
            time.sleep(0.1)
        assert s.get(Account, 2).entries[0].account.name == "bob"
    Base.metadata.drop_all(e)  # asks has_table, then DROP TABLE in dependency order
    print("read ok")

{"write": write, "read": read}[sys.argv[4]]()
"""#

/// asyncpg, the asyncio driver: it prepares every statement, encodes each parameter in binary by the type the
/// statement's Describe reports, and reads single rows with a row limit (a suspended portal).
let asyncpgClient = #"""
import asyncio, datetime, decimal, sys, time, uuid
import asyncpg

password, p1, p3 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
async def connect(port):
    return await asyncpg.connect(host="127.0.0.1", port=port, user="app", password=password, database="app", timeout=10)

EXPECTED = [(1, "a", decimal.Decimal("10.5"), datetime.datetime(2024, 1, 2, 3, 4, 5), datetime.date(2024, 1, 2), True, b"\x00\x01",
             uuid.UUID(int=5), 1.25),
            (2, "b", decimal.Decimal("7"), None, None, None, None, None, None),
            (3, "z", decimal.Decimal("0.1"), None, None, None, None, None, None)]

async def main():
    c = await connect(p1)
    await c.execute("CREATE TABLE apg (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price NUMERIC(10,2), at TIMESTAMP, day DATE, "
                    "ok BOOLEAN, data BYTEA, token UUID, score DOUBLE PRECISION)")
    await c.execute("INSERT INTO apg VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)", 1, "a", decimal.Decimal("10.50"),
                    datetime.datetime(2024, 1, 2, 3, 4, 5), datetime.date(2024, 1, 2), True, b"\x00\x01", uuid.UUID(int=5), 1.25)
    await c.executemany("INSERT INTO apg (id, name, price) VALUES ($1, $2, $3)", [(2, "b", decimal.Decimal("7")), (3, "c", decimal.Decimal("0.1"))])
    n = await c.fetchval("SELECT count(*) FROM apg WHERE price > $1", decimal.Decimal("1"))
    assert n == 2, (n, [tuple(r) for r in await c.fetch("SELECT id, price, typeof(price) FROM apg")])
    async with c.transaction():  # after fetchval's suspended portal: the write must not meet a stale snapshot
        await c.execute("UPDATE apg SET name = $1 WHERE id = $2", "z", 3)
    try:
        await c.execute("INSERT INTO apg (id, name) VALUES ($1, $2)", 1, "duplicate")
        raise AssertionError("a duplicate key was accepted")
    except asyncpg.UniqueViolationError as e:
        assert e.sqlstate == "23505"
    stmt = await c.prepare("SELECT id, at FROM apg WHERE id = $1")
    assert tuple(await stmt.fetchrow(1)) == (1, datetime.datetime(2024, 1, 2, 3, 4, 5))
    await c.close()
    c3 = await connect(p3)
    deadline = time.time() + 30
    while True:
        try:
            got = [tuple(r) for r in await c3.fetch("SELECT * FROM apg ORDER BY id")]
        except asyncpg.PostgresError as e:
            got = repr(e)
        if got == EXPECTED:
            break
        assert time.time() < deadline, f"node 3 never had node 1's rows: {got}"
        await asyncio.sleep(0.1)
    await c3.close()
    print("asyncpg ok")

asyncio.run(main())
"""#

@Suite(.serialized) struct SQLAlchemyEndToEndTests {
    static let password = "sa-e2e-password"

    @Test func anORMApplicationWrittenForPostgresWorksOnEveryNode() throws {
        let ports = distinctFreePorts(3)
        let c = try LiveCluster(nodes: 3, schema: "PRAGMA journal_mode=WAL;", shards: 2) { i in
            """
            [postgres]
            enable = true
            bind = "127.0.0.1:\(ports[i - 1])"
            user = "app"
            password = "\(Self.password)"
            """
        }
        let arguments = [Self.password, String(ports[0]), String(ports[2])]
        let written = try runPython(sqlalchemyClient, arguments + ["write"], in: c.directory, python: venvPython())
        #expect(written.contains("write ok"), "\(written)")
        // What the application stored, on every node, is plain SQLite text and numbers that sqlite3 applications read.
        let stored = "SELECT balance, typeof(balance), opened, opened_at, born, alarm, active, token, settings FROM accounts WHERE id = 1;"
        #expect(try c.waitForConvergence(stored, expected: "10.5|real|2024-01-02 03:04:05.00025|2024-01-02 03:04:05+00|1990-05-06|07:30:00|1|"
                                         + "12345678-9abc-def0-0123-456789abcdef|{\"theme\": \"dark\", \"n\": [1, 2]}\n").hasPrefix("10.5"))
        let read = try runPython(sqlalchemyClient, arguments + ["read"], in: c.directory, python: venvPython())
        #expect(read.contains("read ok"), "\(read)")
        // asyncpg through node 1, read back through node 3.
        let asyncpg = try runPython(asyncpgClient, arguments, in: c.directory, python: venvPython())
        #expect(asyncpg.contains("asyncpg ok"), "\(asyncpg)")
        // drop_all on node 3 reaches every node.
        #expect(try c.waitForConvergence("SELECT count(*) FROM sqlite_schema WHERE name IN ('accounts', 'entries');", expected: "0\n") == "0\n")
    }
}
