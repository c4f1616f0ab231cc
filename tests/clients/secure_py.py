"""TLS and credentials with the official QuestDB Python client (PyPI
`questdb` 6.x) and psycopg 3 against `basalt serve --users ... --tls-cert
...`. Run by tests/security.rs.

    python secure_py.py ingest HTTP_PORT ILP_PORT CA USER PASSWORD TOKEN KEY_ID D X Y
    python secure_py.py pg PG_PORT CA READER READER_PASSWORD

Each scenario checks what it reads back itself and prints `ok` last; any
failure raises (non-zero exit, traceback on stderr).
"""
import sys
import time

ROWS = 100
BASE_NS = 1_704_067_200_000_000_000  # 2024-01-01T00:00:00Z


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def send(conf, table):
    from questdb import Sender, TimestampNanos

    with Sender.from_conf(conf) as s:
        for i in range(ROWS):
            s.row(table, symbols={"host": f"h{i % 3}"}, columns={"v": float(i), "n": i},
                  at=TimestampNanos(BASE_NS + i * 1000))
        s.flush()


def ingest(http_port, ilp_port, ca, user, password, token, key_id, d, x, y):
    import questdb

    tls = f"tls_roots={ca};"
    # ILP over HTTPS, basic credentials.
    send(f"https::addr=localhost:{http_port};username={user};password={password};{tls}", "py_https")
    # ILP over TCP with TLS, QuestDB's ECDSA challenge.
    send(f"tcps::addr=localhost:{ilp_port};username={key_id};token={d};token_x={x};token_y={y};{tls}",
         "py_tcps")
    # A wrong password: the client shows the server's 401.
    try:
        send(f"https::addr=localhost:{http_port};username={user};password=wrong;{tls}", "py_refused")
        raise AssertionError("a wrong password was accepted")
    except AssertionError:
        raise
    except Exception as e:  # the client's ingress error
        check("401" in str(e) and "invalid credentials" in str(e), f"unexpected error: {e}")
    # QWP over WebSocket with TLS and a bearer token: write, then query.
    with questdb.connect(f"wss::addr=localhost:{http_port};token={token};{tls}") as db:
        with db.sender() as s:
            for i in range(ROWS):
                s.row("py_wss", symbols={"host": "a"}, columns={"n": i},
                      at=questdb.TimestampNanos(BASE_NS + i * 1000))
            s.flush()
        deadline = time.monotonic() + 60
        while True:
            try:
                rows = list(db.query("select count() from py_wss").iter_rows())
            except questdb.QuestDBError as e:
                # Acknowledged rows become visible a few ms later; the
                # table too.
                check("not found" in str(e), f"unexpected error: {e}")
                rows = []
            if rows and rows[0][0] == ROWS:
                break
            check(time.monotonic() < deadline, f"py_wss: {rows} rows, want {ROWS}")
            time.sleep(0.05)
    print("ok")


def pg(port, ca, user, password):
    import psycopg

    conn = psycopg.connect(host="localhost", port=int(port), user=user, password=password,
                           dbname="qdb", sslmode="verify-full", sslrootcert=ca, autocommit=True)
    check(conn.pgconn.ssl_in_use, "the session is not encrypted")
    check(conn.execute("select 40 + 2").fetchone()[0] == 42, "select 40 + 2")
    try:
        conn.execute("create table py_forbidden (ts timestamp) timestamp(ts)")
        raise AssertionError("a read-only user created a table")
    except psycopg.errors.InsufficientPrivilege as e:
        check("read-only" in str(e), f"unexpected message: {e}")
    conn.close()
    try:
        psycopg.connect(host="localhost", port=int(port), user=user, password="wrong",
                        dbname="qdb", sslmode="verify-full", sslrootcert=ca)
        raise AssertionError("a wrong password was accepted")
    except psycopg.OperationalError as e:
        check(f'password authentication failed for user "{user}"' in str(e), f"unexpected error: {e}")
    print("ok")


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    {"ingest": ingest, "pg": pg}[mode](*args)
