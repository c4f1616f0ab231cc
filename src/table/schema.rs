//! Column types, partition schemes and table schemas, plus the name rules
//! that keep every table and column inside the data directory.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, NaiveDate, Timelike};

use super::TableError;

/// Longest table or column name, in bytes. Names become file names.
pub const NAME_BYTES_MAX: usize = 127;
/// Most columns a table may have.
pub const COLUMNS_MAX: usize = 2048;
/// Designated timestamps must lie in years 1..=9999 (UTC): every partition
/// scheme can name and floor them.
pub const TIMESTAMP_MIN_US: i64 = -62_135_596_800_000_000;
pub const TIMESTAMP_MAX_US: i64 = 253_402_300_799_999_999;

/// A column's type. The discriminant is the on-disk type tag (docs/format.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ColumnType {
    Boolean = 1,
    Byte = 2,
    Short = 3,
    Int = 4,
    Long = 5,
    Float = 6,
    Double = 7,
    /// Microseconds since the Unix epoch, UTC.
    Timestamp = 8,
    /// Dictionary-encoded string: i32 keys into a table-level dictionary.
    Symbol = 9,
    /// UTF-8 string of any length.
    Varchar = 10,
}

impl ColumnType {
    pub const ALL: [ColumnType; 10] = [
        ColumnType::Boolean,
        ColumnType::Byte,
        ColumnType::Short,
        ColumnType::Int,
        ColumnType::Long,
        ColumnType::Float,
        ColumnType::Double,
        ColumnType::Timestamp,
        ColumnType::Symbol,
        ColumnType::Varchar,
    ];

    pub fn tag(self) -> u8 {
        self as u8
    }

    pub fn from_tag(tag: u8) -> Option<ColumnType> {
        ColumnType::ALL.into_iter().find(|t| t.tag() == tag)
    }

    /// Bytes per value in memory and in the WAL; `None` for varchar.
    /// Booleans are one byte per row in memory and one bit per row on disk.
    pub fn width(self) -> Option<usize> {
        match self {
            ColumnType::Boolean | ColumnType::Byte => Some(1),
            ColumnType::Short => Some(2),
            ColumnType::Int | ColumnType::Float | ColumnType::Symbol => Some(4),
            ColumnType::Long | ColumnType::Double | ColumnType::Timestamp => Some(8),
            ColumnType::Varchar => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Boolean => "BOOLEAN",
            ColumnType::Byte => "BYTE",
            ColumnType::Short => "SHORT",
            ColumnType::Int => "INT",
            ColumnType::Long => "LONG",
            ColumnType::Float => "FLOAT",
            ColumnType::Double => "DOUBLE",
            ColumnType::Timestamp => "TIMESTAMP",
            ColumnType::Symbol => "SYMBOL",
            ColumnType::Varchar => "VARCHAR",
        }
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ColumnType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ColumnType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown column type {s:?}"))
    }
}

/// How rows are split into partitions by their designated timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PartitionBy {
    /// One partition for the whole table; only for tables without a designated timestamp.
    None = 0,
    Hour = 1,
    Day = 2,
    /// ISO weeks, starting on Monday.
    Week = 3,
    Month = 4,
    Year = 5,
}

impl PartitionBy {
    pub fn from_tag(tag: u8) -> Option<PartitionBy> {
        [
            PartitionBy::None,
            PartitionBy::Hour,
            PartitionBy::Day,
            PartitionBy::Week,
            PartitionBy::Month,
            PartitionBy::Year,
        ]
        .into_iter()
        .find(|p| *p as u8 == tag)
    }

    /// Start (µs since epoch) of the partition holding `ts_us`.
    pub fn floor(self, ts_us: i64) -> Result<i64, TableError> {
        if !(TIMESTAMP_MIN_US..=TIMESTAMP_MAX_US).contains(&ts_us) {
            return Err(TableError::TimestampOutOfRange { ts_us });
        }
        let dt = DateTime::from_timestamp_micros(ts_us)
            .ok_or(TableError::TimestampOutOfRange { ts_us })?
            .naive_utc();
        let date = dt.date();
        let start = match self {
            PartitionBy::None => return Ok(i64::MIN),
            PartitionBy::Hour => date.and_hms_opt(dt.hour(), 0, 0),
            PartitionBy::Day => date.and_hms_opt(0, 0, 0),
            PartitionBy::Week => date
                .checked_sub_signed(Duration::days(i64::from(
                    date.weekday().num_days_from_monday(),
                )))
                .and_then(|d| d.and_hms_opt(0, 0, 0)),
            PartitionBy::Month => NaiveDate::from_ymd_opt(date.year(), date.month(), 1)
                .and_then(|d| d.and_hms_opt(0, 0, 0)),
            PartitionBy::Year => {
                NaiveDate::from_ymd_opt(date.year(), 1, 1).and_then(|d| d.and_hms_opt(0, 0, 0))
            }
        };
        start
            .map(|s| s.and_utc().timestamp_micros())
            .ok_or(TableError::TimestampOutOfRange { ts_us })
    }

    /// Directory name of the partition starting at `floor_us` (without the version suffix).
    pub fn partition_name(self, floor_us: i64) -> String {
        if self == PartitionBy::None {
            return "default".to_string();
        }
        let Some(dt) = DateTime::from_timestamp_micros(floor_us) else {
            return format!("ts{floor_us}");
        };
        match self {
            PartitionBy::None => unreachable!("handled above"),
            PartitionBy::Hour => dt.format("%Y-%m-%dT%H").to_string(),
            PartitionBy::Day => dt.format("%Y-%m-%d").to_string(),
            PartitionBy::Week => {
                let w = dt.iso_week();
                format!("{:04}-W{:02}", w.year(), w.week())
            }
            PartitionBy::Month => dt.format("%Y-%m").to_string(),
            PartitionBy::Year => dt.format("%Y").to_string(),
        }
    }
}

impl fmt::Display for PartitionBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PartitionBy::None => "NONE",
            PartitionBy::Hour => "HOUR",
            PartitionBy::Day => "DAY",
            PartitionBy::Week => "WEEK",
            PartitionBy::Month => "MONTH",
            PartitionBy::Year => "YEAR",
        })
    }
}

impl FromStr for PartitionBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "NONE" => Ok(PartitionBy::None),
            "HOUR" => Ok(PartitionBy::Hour),
            "DAY" => Ok(PartitionBy::Day),
            "WEEK" => Ok(PartitionBy::Week),
            "MONTH" => Ok(PartitionBy::Month),
            "YEAR" => Ok(PartitionBy::Year),
            _ => Err(format!(
                "unknown partition scheme {s:?} (expected NONE, HOUR, DAY, WEEK, MONTH or YEAR)"
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    /// Schema version that added the column (1 for the table's first columns).
    pub added_in: u32,
}

/// A table's shape. Column order is the order of columns in batches and on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schema {
    pub columns: Vec<Column>,
    /// Index of the designated timestamp column; `None` makes the table local-only.
    pub timestamp: Option<usize>,
    pub partition_by: PartitionBy,
    /// Starts at 1; each added column makes the next version. Columns are
    /// only ever appended, so version `v` is a prefix of the column list.
    pub version: u32,
}

impl Schema {
    /// Builds and validates a schema. `timestamp` names the designated timestamp column.
    pub fn new(
        columns: Vec<(&str, ColumnType)>,
        timestamp: Option<&str>,
        partition_by: PartitionBy,
    ) -> Result<Schema, TableError> {
        let columns: Vec<Column> = columns
            .into_iter()
            .map(|(name, ty)| Column {
                name: name.to_string(),
                ty,
                added_in: 1,
            })
            .collect();
        let timestamp = match timestamp {
            None => None,
            Some(ts) => Some(columns.iter().position(|c| c.name == ts).ok_or_else(|| {
                TableError::InvalidSchema(format!(
                    "designated timestamp column {ts:?} does not exist"
                ))
            })?),
        };
        let schema = Schema {
            columns,
            timestamp,
            partition_by,
            version: 1,
        };
        schema.validate()?;
        Ok(schema)
    }

    /// This schema with one more column, as the next schema version.
    pub fn with_column(&self, name: &str, ty: ColumnType) -> Result<Schema, TableError> {
        if self.column_index(name).is_some() {
            return Err(TableError::InvalidSchema(format!(
                "column {name:?} already exists (names are case-insensitive)"
            )));
        }
        let mut next = self.clone();
        next.version += 1;
        next.columns.push(Column {
            name: name.to_string(),
            ty,
            added_in: next.version,
        });
        next.validate()?;
        Ok(next)
    }

    /// The reference table of tests and benchmarks (issue 2).
    pub fn reference_cpu() -> Schema {
        Schema::new(
            vec![
                ("host", ColumnType::Symbol),
                ("region", ColumnType::Symbol),
                ("usage_user", ColumnType::Double),
                ("usage_system", ColumnType::Double),
                ("usage_idle", ColumnType::Double),
                ("temp", ColumnType::Double),
                ("requests", ColumnType::Long),
                ("ts", ColumnType::Timestamp),
            ],
            Some("ts"),
            PartitionBy::Day,
        )
        .expect("the reference schema is valid")
    }

    pub fn validate(&self) -> Result<(), TableError> {
        if self.columns.is_empty() {
            return Err(TableError::InvalidSchema(
                "a table needs at least one column".into(),
            ));
        }
        if self.columns.len() > COLUMNS_MAX {
            return Err(TableError::InvalidSchema(format!(
                "{} columns is more than the limit of {COLUMNS_MAX}",
                self.columns.len()
            )));
        }
        for (i, c) in self.columns.iter().enumerate() {
            validate_name("column", &c.name)?;
            if self.columns[..i]
                .iter()
                .any(|o| o.name.eq_ignore_ascii_case(&c.name))
            {
                return Err(TableError::InvalidSchema(format!(
                    "column name {:?} appears twice (names are case-insensitive)",
                    c.name
                )));
            }
        }
        if self
            .columns
            .windows(2)
            .any(|w| w[0].added_in > w[1].added_in)
            || self
                .columns
                .iter()
                .any(|c| c.added_in == 0 || c.added_in > self.version)
        {
            return Err(TableError::InvalidSchema(
                "column versions must ascend from 1 to the schema version".into(),
            ));
        }
        match self.timestamp {
            Some(i) => {
                let c = self.columns.get(i).ok_or_else(|| {
                    TableError::InvalidSchema(format!(
                        "designated timestamp index {i} out of range"
                    ))
                })?;
                if c.ty != ColumnType::Timestamp {
                    return Err(TableError::InvalidSchema(format!(
                        "designated timestamp column {:?} has type {}, expected TIMESTAMP",
                        c.name, c.ty
                    )));
                }
                if self.partition_by == PartitionBy::None {
                    return Err(TableError::InvalidSchema(
                        "a table with a designated timestamp needs PARTITION BY HOUR, DAY, WEEK, MONTH or YEAR"
                            .into(),
                    ));
                }
            }
            None => {
                if self.partition_by != PartitionBy::None {
                    return Err(TableError::InvalidSchema(format!(
                        "PARTITION BY {} needs a designated timestamp",
                        self.partition_by
                    )));
                }
            }
        }
        Ok(())
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns
            .iter()
            .position(|c| c.name.eq_ignore_ascii_case(name))
    }

    /// Tables without a designated timestamp never replicate.
    pub fn is_local_only(&self) -> bool {
        self.timestamp.is_none()
    }
}

/// Checks a table or column name. Names become file and directory names, so
/// nothing that could leave the data directory or confuse a file system passes.
pub fn validate_name(what: &str, name: &str) -> Result<(), TableError> {
    let bad = |why: &str| TableError::InvalidName {
        what: what.to_string(),
        name: name.to_string(),
        why: why.to_string(),
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(bad("it is longer than 127 bytes"));
    }
    if name.starts_with('.') || name.starts_with('_') {
        return Err(bad(
            "it starts with '.' or '_' (reserved for basalt's own files)",
        ));
    }
    if let Some(c) = name.chars().find(|c| {
        c.is_control()
            || matches!(
                c,
                '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|' | '~'
            )
    }) {
        return Err(bad(&format!("it contains the character {c:?}")));
    }
    if name.trim() != name {
        return Err(bad("it starts or ends with white space"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_micros()
    }

    #[test]
    fn floors_and_names_every_scheme() {
        let t = us("2024-03-07T13:45:12.123456Z"); // a Thursday
        let cases = [
            (PartitionBy::Hour, "2024-03-07T13:00:00Z", "2024-03-07T13"),
            (PartitionBy::Day, "2024-03-07T00:00:00Z", "2024-03-07"),
            (PartitionBy::Week, "2024-03-04T00:00:00Z", "2024-W10"),
            (PartitionBy::Month, "2024-03-01T00:00:00Z", "2024-03"),
            (PartitionBy::Year, "2024-01-01T00:00:00Z", "2024"),
        ];
        for (p, floor, name) in cases {
            let f = p.floor(t).unwrap();
            assert_eq!(f, us(floor), "{p}");
            assert_eq!(p.partition_name(f), name, "{p}");
        }
        // Before the epoch floors downwards, not towards zero.
        assert_eq!(
            PartitionBy::Day.floor(-1).unwrap(),
            us("1969-12-31T00:00:00Z")
        );
        assert_eq!(PartitionBy::None.partition_name(i64::MIN), "default");
        // The ends of the supported range floor without overflow; beyond is an error.
        for p in [
            PartitionBy::Hour,
            PartitionBy::Day,
            PartitionBy::Week,
            PartitionBy::Month,
            PartitionBy::Year,
        ] {
            assert!(p.floor(TIMESTAMP_MIN_US).is_ok(), "{p}");
            assert!(p.floor(TIMESTAMP_MAX_US).is_ok(), "{p}");
            assert!(
                p.floor(i64::MIN).is_err() && p.floor(i64::MAX).is_err(),
                "{p}"
            );
        }
    }

    #[test]
    fn rejects_names_that_escape_the_data_dir() {
        for n in [
            "", "..", ".hidden", "a/b", "a\\b", "_txn", "x\0y", " pad", "a\nb",
        ] {
            assert!(validate_name("table", n).is_err(), "{n:?} accepted");
        }
        for n in ["cpu", "cpu.load", "Ünïcode", "a-b_c 1"] {
            validate_name("table", n).unwrap();
        }
        assert!(validate_name("table", &"x".repeat(128)).is_err());
    }

    #[test]
    fn schema_rules() {
        let s = Schema::reference_cpu();
        assert_eq!(s.timestamp, Some(7));
        assert!(!s.is_local_only());
        assert!(Schema::new(vec![("a", ColumnType::Long)], Some("a"), PartitionBy::Day).is_err());
        assert!(Schema::new(vec![("a", ColumnType::Long)], None, PartitionBy::Day).is_err());
        assert!(Schema::new(
            vec![("a", ColumnType::Long), ("A", ColumnType::Int)],
            None,
            PartitionBy::None
        )
        .is_err());
        let local = Schema::new(vec![("a", ColumnType::Long)], None, PartitionBy::None).unwrap();
        assert!(local.is_local_only());
        for t in ColumnType::ALL {
            assert_eq!(ColumnType::from_tag(t.tag()), Some(t));
            assert_eq!(t.name().parse::<ColumnType>().unwrap(), t);
        }
    }
}
