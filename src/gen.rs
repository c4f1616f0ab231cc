//! Rows of the reference table `cpu` for the demo, tests and benchmarks, so
//! every figure is about the same data:
//! `cpu(host SYMBOL, region SYMBOL, usage_user DOUBLE, usage_system DOUBLE,
//! usage_idle DOUBLE, temp DOUBLE, requests LONG, ts TIMESTAMP)
//! TIMESTAMP(ts) PARTITION BY DAY`, 100 distinct hosts, ts +1 µs per row.

use crate::batch::{Batch, BatchBuilder, Value};
use crate::table::Schema;

/// 2024-01-01T00:00:00Z in µs: where generated timestamps start.
pub const BASE_TS_US: i64 = 1_704_067_200_000_000;
pub const HOSTS: u64 = 100;
pub const REGIONS: [&str; 4] = ["us-east-1", "us-west-2", "eu-central-1", "ap-south-1"];

/// Host names, built once so generating rows does not allocate per row.
pub struct CpuGenerator {
    schema: Schema,
    hosts: Vec<String>,
}

impl Default for CpuGenerator {
    fn default() -> Self {
        CpuGenerator {
            schema: Schema::reference_cpu(),
            hosts: (0..HOSTS).map(|h| format!("host_{h:02}")).collect(),
        }
    }
}

impl CpuGenerator {
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Rows `first..first + n`; row `i` has `requests = i` and
    /// `ts = BASE_TS_US + i + ts_offset_us`.
    pub fn batch(&self, first: u64, n: usize, ts_offset_us: i64) -> Batch {
        let mut b = BatchBuilder::new(&self.schema);
        for i in first..first + n as u64 {
            self.row(&mut b, i, BASE_TS_US + i as i64 + ts_offset_us);
        }
        b.finish()
    }

    /// Appends row `i` with timestamp `ts_us`.
    pub fn row(&self, b: &mut BatchBuilder, i: u64, ts_us: i64) {
        self.row_partial(b, i, ts_us);
        b.finish_row().expect("generated rows have a timestamp");
    }

    /// Appends row `i` as an ILP line for `table` (designated timestamp in
    /// nanoseconds, `BASE_TS_US + i` µs), as a QuestDB client would send it.
    pub fn ilp_line(&self, out: &mut Vec<u8>, table: &str, i: u64) {
        use std::io::Write;
        let h = (i % HOSTS) as usize;
        let f = (i % 1000) as f64;
        let ts_ns = (BASE_TS_US + i as i64) * 1000;
        writeln!(
            out,
            "{table},host={},region={} usage_user={:?},usage_system={:?},usage_idle={:?},temp={:?},requests={i}i {ts_ns}",
            self.hosts[h],
            REGIONS[h % REGIONS.len()],
            f / 10.0,
            f / 20.0,
            100.0 - f / 10.0,
            40.0 + f / 50.0,
        )
        .expect("writing to a Vec cannot fail");
    }

    /// Checks that `r` (a scan of a table filled with rows `0..n` of this
    /// generator, through ILP or the batch API) holds exactly those rows, in
    /// timestamp order. Names the first row that differs.
    pub fn check_scan(&self, r: &crate::table::ScanResult, n: u64) -> Result<(), String> {
        if r.row_count() as u64 != n {
            return Err(format!("{} rows, expected {n}", r.row_count()));
        }
        let col = |name: &str| {
            r.names
                .iter()
                .position(|c| c == name)
                .ok_or_else(|| format!("no column {name}"))
        };
        let cols = [
            col("host")?,
            col("region")?,
            col("usage_user")?,
            col("usage_system")?,
            col("usage_idle")?,
            col("temp")?,
            col("requests")?,
            col(r.names.last().map_or("", String::as_str))?,
        ];
        for i in 0..n {
            let h = (i % HOSTS) as usize;
            let f = (i % 1000) as f64;
            let want = [
                Value::Symbol(&self.hosts[h]),
                Value::Symbol(REGIONS[h % REGIONS.len()]),
                Value::Double(f / 10.0),
                Value::Double(f / 20.0),
                Value::Double(100.0 - f / 10.0),
                Value::Double(40.0 + f / 50.0),
                Value::Long(i as i64),
                Value::Timestamp(BASE_TS_US + i as i64),
            ];
            for (&c, want) in cols.iter().zip(want) {
                let got = r.value(c, i as usize);
                if got != want {
                    return Err(format!(
                        "row {i}, column {}: got {got:?}, expected {want:?}",
                        r.names[c]
                    ));
                }
            }
        }
        Ok(())
    }

    /// Sets the reference columns of row `i` without ending the row, so a
    /// caller can set columns added to the table since.
    pub fn row_partial(&self, b: &mut BatchBuilder, i: u64, ts_us: i64) {
        let h = (i % HOSTS) as usize;
        let f = (i % 1000) as f64;
        let set = |b: &mut BatchBuilder, c: usize, v: Value<'_>| {
            b.set(c, v)
                .expect("generated values match the reference schema");
        };
        set(b, 0, Value::Symbol(&self.hosts[h]));
        set(b, 1, Value::Symbol(REGIONS[h % REGIONS.len()]));
        set(b, 2, Value::Double(f / 10.0));
        set(b, 3, Value::Double(f / 20.0));
        set(b, 4, Value::Double(100.0 - f / 10.0));
        set(b, 5, Value::Double(40.0 + f / 50.0));
        set(b, 6, Value::Long(i as i64));
        set(b, 7, Value::Timestamp(ts_us));
    }
}
