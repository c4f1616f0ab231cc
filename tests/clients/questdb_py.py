"""Sends rows 0..n of basalt's reference `cpu` table (src/gen.rs) through the
official QuestDB Python client (PyPI `questdb`).

    python questdb_py.py CONF TABLE N

CONF is the client's configuration string, e.g. `http::addr=127.0.0.1:9000;`.
Prints `sent N` once the client has flushed everything (over HTTP: every
request answered 204).
"""
import sys

import questdb

Sender = getattr(questdb, "Sender", None)
TimestampNanos = getattr(questdb, "TimestampNanos", None)
if Sender is None or TimestampNanos is None:
    from questdb.ingress import Sender, TimestampNanos  # older releases

BASE_TS_NS = 1_704_067_200_000_000_000
REGIONS = ["us-east-1", "us-west-2", "eu-central-1", "ap-south-1"]
HOSTS = [f"host_{h:02}" for h in range(100)]


def main():
    conf, table, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with Sender.from_conf(conf) as sender:
        for i in range(n):
            h = i % 100
            f = float(i % 1000)
            sender.row(
                table,
                symbols={"host": HOSTS[h], "region": REGIONS[h % 4]},
                columns={
                    "usage_user": f / 10.0,
                    "usage_system": f / 20.0,
                    "usage_idle": 100.0 - f / 10.0,
                    "temp": 40.0 + f / 50.0,
                    "requests": i,
                },
                at=TimestampNanos(BASE_TS_NS + i * 1000),
            )
        sender.flush()
    print(f"sent {n}", flush=True)


if __name__ == "__main__":
    main()
