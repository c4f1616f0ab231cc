"""The Python half of `cargo bench --bench ilp -- qwp-py`: the reference
table as a pandas DataFrame, written over QWP with the official client's
columnar path (PyPI `questdb` 6.x, `QuestDB.dataframe`), which returns once
every batch is committed (durable on basalt).

    python qwp_df.py ADDR TABLE ROWS HOSTS BASE_TS_US REGION,REGION,...

Builds the frame, prints `ready <bytes in memory>`, waits for a line on
stdin, writes, prints `done <seconds> <this process's CPU seconds>`.
"""
import sys
import time

import numpy as np
import pandas as pd
import questdb


def main():
    addr, table, rows, hosts, base_us, regions = sys.argv[1:7]
    rows, hosts, base_us = int(rows), int(hosts), int(base_us)
    regions = regions.split(",")
    i = np.arange(rows, dtype=np.int64)
    h = i % hosts
    f = (i % 1000).astype(np.float64)
    # The same rows as basalt::gen::CpuGenerator::ilp_line.
    df = pd.DataFrame({
        "host": pd.Categorical.from_codes(h, categories=[f"host_{k:02}" for k in range(hosts)]),
        "region": pd.Categorical.from_codes(h % len(regions), categories=regions),
        "usage_user": f / 10.0,
        "usage_system": f / 20.0,
        "usage_idle": 100.0 - f / 10.0,
        "temp": 40.0 + f / 50.0,
        "requests": i,
        "timestamp": pd.to_datetime((base_us + i) * 1000, unit="ns"),
    })
    # No reader connection: only writes (and servers built without SQL).
    db = questdb.connect(f"ws::addr={addr};query_pool_min=0;")
    try:
        print(f"ready {int(df.memory_usage(deep=False).sum())}", flush=True)
        sys.stdin.readline()
        c0, t0 = time.process_time(), time.perf_counter()
        db.dataframe(df, table_name=table, at="timestamp")
        t1, c1 = time.perf_counter(), time.process_time()
        print(f"done {t1 - t0} {c1 - c0}", flush=True)
    finally:
        db.close()


if __name__ == "__main__":
    main()
