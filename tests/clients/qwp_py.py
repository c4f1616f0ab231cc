"""QWP over WebSocket with the official QuestDB Python client (PyPI
`questdb` 6.x) against `basalt serve`. Run by tests/clients.rs.

    python qwp_py.py types ADDR
    python qwp_py.py dataframe ADDR
    python qwp_py.py replica REPLICA_ADDR PRIMARY_ADDR

Each scenario checks what it reads back itself and prints `ok` last; any
failure raises (non-zero exit, traceback on stderr).
"""
import datetime
import json
import math
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import questdb
from questdb import Sender, TimestampMicros, TimestampNanos

UTC = datetime.timezone.utc
BASE_NS = 1_704_067_200_000_000_000  # 2024-01-01T00:00:00Z


def exec_json(addr, sql):
    url = f"http://{addr}/exec?" + urllib.parse.urlencode({"query": sql})
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.load(r)


def wait_rows(addr, table, n):
    """Acknowledged rows are durable at once and visible to queries a few
    ms later (the apply step, `--apply-interval-ms`): wait until `table`
    holds `n` rows. A table not there yet counts as not yet; any other
    error fails."""
    deadline = time.monotonic() + 60
    while True:
        try:
            got = exec_json(addr, f"select count() from {table}")["dataset"][0][0]
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")
            check(e.code == 400 and "not found" in body.lower(), f"{table}: {e.code} {body}")
            got = None
        if got == n:
            return
        check(got is None or got < n, f"{table}: {got} rows, more than {n}")
        check(time.monotonic() < deadline, f"{table}: {got} rows after 60 s, want {n}")
        time.sleep(0.02)


def iso_us(dt):
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def same_as_exec(addr, db, sql):
    """The rows of `sql` over QWP equal /exec's, value for value."""
    qwp = list(db.query(sql).iter_rows())
    ex = exec_json(addr, sql)
    check(len(qwp) == ex["count"], f"{sql}: {len(qwp)} rows over QWP, {ex['count']} over /exec")
    for got, want in zip(qwp, ex["dataset"]):
        for g, w in zip(got, want):
            if isinstance(g, datetime.datetime):
                g = iso_us(g)
            if g is False and w is None:
                # QWP has no null BOOLEAN (nor has QuestDB): false.
                continue
            if isinstance(g, float) and isinstance(w, (int, float)):
                check(math.isclose(g, w), f"{sql}: {got} != {want}")
            else:
                check(g == w, f"{sql}: {got} != {want}")
    return qwp


def types(addr):
    conf = f"ws::addr={addr};"
    with Sender.from_conf(conf) as s:
        s.row(
            "Qwp_Types",
            symbols={"city": "Paris"},
            columns={
                "Temperature": 12.5,
                "n": 3,
                "ok": True,
                "note": "héllo, wörld",
                "seen": TimestampMicros(1_700_000_000_123_456),
            },
            at=TimestampNanos(BASE_NS),
        )
        # Missing fields are nulls.
        s.row("Qwp_Types", symbols={"city": "Oslo"}, columns={"Temperature": -1.0},
              at=TimestampNanos(BASE_NS + 1_000))
        s.flush()
        # A column new mid-stream, and the table under another spelling.
        s.row("qwp_types", symbols={"city": "Rome"},
              columns={"temperature": 30.25, "n": 5, "extra": "new"},
              at=TimestampNanos(BASE_NS + 2_000))
        s.flush()
    wait_rows(addr, "qwp_types", 3)
    db = questdb.connect(conf)
    try:
        info = db.server_info()
        check(info.cluster_id == "basalt", f"server info {info}")
        rows = same_as_exec(
            addr, db,
            "select city, Temperature, n, ok, note, seen, extra, timestamp "
            "from qwp_types order by timestamp",
        )
        check(len(rows) == 3, f"rows {rows}")
        paris, oslo, rome = rows
        check(paris[:5] == ("Paris", 12.5, 3, True, "héllo, wörld"), f"row 1 {paris}")
        check(iso_us(paris[5]) == "2023-11-14T22:13:20.123456Z", f"seen {paris[5]}")
        check(paris[6] is None, f"extra was not there yet: {paris}")
        check(oslo[2] is None and oslo[4] is None and oslo[5] is None, f"nulls {oslo}")
        check(rome[0] == "Rome" and rome[1] == 30.25 and rome[6] == "new", f"row 3 {rome}")
        # A result without rows still has its columns.
        empty = db.query("select city, n from qwp_types where n > 1000").to_pandas()
        check(list(empty.columns) == ["city", "n"] and len(empty) == 0, f"empty {empty}")
        # A bad query is an error, and the connection goes on.
        try:
            db.query("select nope from qwp_types").to_pandas()
            raise AssertionError("a bad query was answered")
        except questdb.QuestDBError as e:
            check("nope" in str(e), f"error names the column: {e}")
        # Binds.
        got = list(db.query("select city from qwp_types where n = $1", binds=[5]).iter_rows())
        check(got == [("Rome",)], f"bound query {got}")
        # DDL answers EXEC_DONE.
        done = db.execute("create table qwp_ddl (x long, ts timestamp) timestamp(ts)")
        check(done is not None, f"execute answered {done}")
    finally:
        db.close()


def dataframe(addr):
    import pandas as pd

    conf = f"ws::addr={addr};"
    df = pd.DataFrame({
        "sym": pd.Categorical(["a", "b", "a", "c"]),
        "x": [1.5, float("nan"), 3.25, 4.0],
        "n": [1, 2, 3, 4],
        "name": ["one", None, "three", "four"],
        "ts": pd.to_datetime([BASE_NS + i * 1_000_000 for i in range(4)], unit="ns", utc=True),
    })
    db = questdb.connect(conf)
    try:
        db.dataframe(df, table_name="qwp_df", at="ts")
        wait_rows(addr, "qwp_df", 4)
        got = db.query("select sym, x, n, name, timestamp from qwp_df order by timestamp").to_pandas()
        check(len(got) == 4, f"rows {got}")
        check(list(got["sym"].astype(str)) == ["a", "b", "a", "c"], f"sym {got['sym']}")
        check(got["x"][0] == 1.5 and math.isnan(got["x"][1]) and got["x"][3] == 4.0, f"x {got['x']}")
        check(list(got["name"].where(got["name"].notna(), None)) == ["one", None, "three", "four"],
              f"name {got['name']}")
        check(list(got["n"]) == [1, 2, 3, 4], f"n {got['n']}")
        check(got["timestamp"][3] == pd.Timestamp(BASE_NS + 3_000_000, unit="ns"),
              f"timestamp {got['timestamp']}")
        same_as_exec(addr, db, "select sym, x, name, timestamp from qwp_df order by timestamp")
    finally:
        db.close()


def replica(replica_addr, primary_addr):
    # A replica refuses writes (421 + its role): alone, the client fails...
    try:
        with Sender.from_conf(f"ws::addr={replica_addr};") as s:
            s.row("qwp_failover", columns={"x": 1}, at=TimestampNanos(BASE_NS))
            s.flush()
        raise AssertionError("the replica took a write")
    except questdb.QuestDBError as e:
        check("REPLICA" in str(e) or "421" in str(e) or "role" in str(e), f"refusal {e}")
    # ... given both, it writes to the primary.
    with Sender.from_conf(f"ws::addr={replica_addr},{primary_addr};") as s:
        s.row("qwp_failover", columns={"x": 2}, at=TimestampNanos(BASE_NS))
        s.flush()
    wait_rows(primary_addr, "qwp_failover", 1)
    got = exec_json(primary_addr, "select x from qwp_failover")
    check(got["dataset"] == [[2]], f"primary has {got}")
    # Readers find the role they ask for.
    for target, role in [("primary", "primary"), ("replica", "replica")]:
        db = questdb.connect(f"ws::addr={replica_addr},{primary_addr};target={target};"
                             "sender_pool_min=0;")
        try:
            info = db.server_info()
            check(info.role.name.lower() == role, f"target={target} reached {info}")
        finally:
            db.close()


def main():
    scenario = sys.argv[1]
    {"types": types, "dataframe": dataframe, "replica": replica}[scenario](*sys.argv[2:])
    print("ok", flush=True)


if __name__ == "__main__":
    main()
