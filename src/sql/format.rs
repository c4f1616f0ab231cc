//! Query results as QuestDB's HTTP API gives them: `/exec` JSON
//! (`{query, columns, timestamp, dataset, count}`) and `/exp` CSV.
//!
//! Timestamps are ISO 8601 UTC with microseconds (`2024-01-15T13:00:00.000000Z`);
//! NaN and infinite floats are null, as in QuestDB. In CSV a null is an empty
//! field and an empty string is `""`.

use std::io::Write;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float32Array, Float64Array, Int16Array, Int32Array,
    Int64Array, Int8Array, LargeStringArray, RecordBatch, StringArray, StringViewArray,
    UInt16Array, UInt32Array, UInt64Array, UInt8Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int32Type, Schema, TimeUnit};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use super::provider::DESIGNATED_TIMESTAMP;

/// QuestDB's name for the type of a result column.
pub fn questdb_type(dt: &DataType) -> &'static str {
    match dt {
        DataType::Boolean => "BOOLEAN",
        DataType::Int8 => "BYTE",
        DataType::Int16 | DataType::UInt8 => "SHORT",
        DataType::Int32 | DataType::UInt16 => "INT",
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => "LONG",
        DataType::Float16 | DataType::Float32 => "FLOAT",
        DataType::Float64 | DataType::Decimal128(..) | DataType::Decimal256(..) => "DOUBLE",
        DataType::Timestamp(..) => "TIMESTAMP",
        DataType::Date32 | DataType::Date64 => "DATE",
        DataType::Dictionary(_, _) => "SYMBOL",
        DataType::Null => "NULL",
        _ => "VARCHAR",
    }
}

/// Index of the designated timestamp among a result's columns, or -1.
pub fn timestamp_index(schema: &Schema) -> i64 {
    schema
        .fields()
        .iter()
        .position(|f| f.metadata().contains_key(DESIGNATED_TIMESTAMP))
        .map_or(-1, |i| i as i64)
}

/// One column of a batch, ready to render row by row.
enum Column<'a> {
    Bool(&'a BooleanArray),
    I8(&'a Int8Array),
    I16(&'a Int16Array),
    I32(&'a Int32Array),
    I64(&'a Int64Array),
    U8(&'a UInt8Array),
    U16(&'a UInt16Array),
    U32(&'a UInt32Array),
    U64(&'a UInt64Array),
    F32(&'a Float32Array),
    F64(&'a Float64Array),
    /// Timestamp values and how many of them make a microsecond (or the
    /// other way round, when negative: seconds and milliseconds).
    Ts(&'a dyn Array, TimeUnit),
    /// Strings, nulls kept.
    Str(Strings<'a>),
    /// Symbols: keys into a dictionary of strings (decoded row by row, so
    /// a batch never converts the whole dictionary).
    Dict(&'a Int32Array, Strings<'a>),
    /// Other strings, converted.
    Cast(Arc<StringArray>),
    /// Anything else, as Arrow displays it.
    Other(ArrayRef),
}

impl<'a> Column<'a> {
    fn new(a: &'a ArrayRef) -> Result<Column<'a>, datafusion::arrow::error::ArrowError> {
        Ok(match a.data_type() {
            DataType::Boolean => Column::Bool(a.as_boolean()),
            DataType::Int8 => Column::I8(a.as_primitive()),
            DataType::Int16 => Column::I16(a.as_primitive()),
            DataType::Int32 => Column::I32(a.as_primitive()),
            DataType::Int64 => Column::I64(a.as_primitive()),
            DataType::UInt8 => Column::U8(a.as_primitive()),
            DataType::UInt16 => Column::U16(a.as_primitive()),
            DataType::UInt32 => Column::U32(a.as_primitive()),
            DataType::UInt64 => Column::U64(a.as_primitive()),
            DataType::Float32 => Column::F32(a.as_primitive()),
            DataType::Float64 => Column::F64(a.as_primitive()),
            DataType::Timestamp(unit, _) => Column::Ts(a.as_ref(), *unit),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                Column::Str(Strings::new(a.as_ref()).expect("a string type"))
            }
            DataType::Dictionary(k, _) if **k == DataType::Int32 => {
                let d = a.as_dictionary::<Int32Type>();
                match Strings::new(d.values().as_ref()) {
                    Some(values) => Column::Dict(d.keys(), values),
                    None => Column::Other(a.clone()),
                }
            }
            DataType::Dictionary(_, _) => {
                let s = cast(a, &DataType::Utf8)?;
                Column::Cast(Arc::new(s.as_string::<i32>().clone()))
            }
            _ => Column::Other(a.clone()),
        })
    }
}

/// A string array of any of Arrow's string layouts.
#[derive(Clone, Copy)]
pub enum Strings<'a> {
    Utf8(&'a StringArray),
    Large(&'a LargeStringArray),
    View(&'a StringViewArray),
}

impl<'a> Strings<'a> {
    pub fn new(a: &'a dyn Array) -> Option<Strings<'a>> {
        Some(match a.data_type() {
            DataType::Utf8 => Strings::Utf8(a.as_string::<i32>()),
            DataType::LargeUtf8 => Strings::Large(a.as_string::<i64>()),
            DataType::Utf8View => Strings::View(a.as_string_view()),
            _ => return None,
        })
    }

    /// Row `i`, `None` when null (or out of range).
    pub fn get(&self, i: usize) -> Option<&'a str> {
        match self {
            Strings::Utf8(a) => (i < a.len() && !a.is_null(i)).then(|| a.value(i)),
            Strings::Large(a) => (i < a.len() && !a.is_null(i)).then(|| a.value(i)),
            Strings::View(a) => (i < a.len() && !a.is_null(i)).then(|| a.value(i)),
        }
    }
}

/// A timestamp in `unit` as microseconds.
fn to_us(v: i64, unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => v.saturating_mul(1_000_000),
        TimeUnit::Millisecond => v.saturating_mul(1000),
        TimeUnit::Microsecond => v,
        TimeUnit::Nanosecond => v.div_euclid(1000),
    }
}

/// `2024-01-15T13:00:00.000000Z`.
pub fn write_timestamp(out: &mut Vec<u8>, us: i64) {
    match chrono::DateTime::from_timestamp_micros(us) {
        Some(t) => {
            let _ = write!(out, "{}", t.format("%Y-%m-%dT%H:%M:%S%.6fZ"));
        }
        None => {
            let _ = write!(out, "{us}");
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Style {
    Json,
    Csv,
}

fn write_str(out: &mut Vec<u8>, s: &str, style: Style) {
    match style {
        Style::Json => {
            serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
        }
        Style::Csv => {
            let quote = s.is_empty()
                || s.contains([',', '"', '\n', '\r'])
                || s.starts_with(' ')
                || s.ends_with(' ');
            if quote {
                out.push(b'"');
                for b in s.bytes() {
                    if b == b'"' {
                        out.push(b'"');
                    }
                    out.push(b);
                }
                out.push(b'"');
            } else {
                out.extend_from_slice(s.as_bytes());
            }
        }
    }
}

fn write_null(out: &mut Vec<u8>, style: Style) {
    if style == Style::Json {
        out.extend_from_slice(b"null");
    }
}

/// A float in its type's own shortest form (so 0.1f32 reads 0.1); a whole
/// number keeps its `.0`, so a DOUBLE never reads as an integer.
fn write_float(out: &mut Vec<u8>, v: impl std::fmt::Display, finite: bool, style: Style) {
    if finite {
        let start = out.len();
        let _ = write!(out, "{v}");
        if !out[start..].iter().any(|b| matches!(b, b'.' | b'e' | b'E')) {
            out.extend_from_slice(b".0");
        }
    } else {
        write_null(out, style);
    }
}

impl Column<'_> {
    fn write(&self, row: usize, out: &mut Vec<u8>, style: Style) {
        macro_rules! int {
            ($a:expr) => {
                if $a.is_null(row) {
                    write_null(out, style)
                } else {
                    let _ = write!(out, "{}", $a.value(row));
                }
            };
        }
        match self {
            Column::Bool(a) => {
                if a.is_null(row) {
                    write_null(out, style)
                } else {
                    out.extend_from_slice(if a.value(row) { b"true" } else { b"false" });
                }
            }
            Column::I8(a) => int!(a),
            Column::I16(a) => int!(a),
            Column::I32(a) => int!(a),
            Column::I64(a) => int!(a),
            Column::U8(a) => int!(a),
            Column::U16(a) => int!(a),
            Column::U32(a) => int!(a),
            Column::U64(a) => int!(a),
            Column::F32(a) => {
                if a.is_null(row) {
                    write_null(out, style)
                } else {
                    let v = a.value(row);
                    write_float(out, v, v.is_finite(), style);
                }
            }
            Column::F64(a) => {
                if a.is_null(row) {
                    write_null(out, style)
                } else {
                    let v = a.value(row);
                    write_float(out, v, v.is_finite(), style);
                }
            }
            Column::Ts(a, unit) => {
                if a.is_null(row) {
                    write_null(out, style);
                    return;
                }
                let v = match unit {
                    TimeUnit::Second => a
                        .as_primitive::<datafusion::arrow::datatypes::TimestampSecondType>()
                        .value(row),
                    TimeUnit::Millisecond => a
                        .as_primitive::<datafusion::arrow::datatypes::TimestampMillisecondType>()
                        .value(row),
                    TimeUnit::Microsecond => a
                        .as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>()
                        .value(row),
                    TimeUnit::Nanosecond => a
                        .as_primitive::<datafusion::arrow::datatypes::TimestampNanosecondType>()
                        .value(row),
                };
                if style == Style::Json {
                    out.push(b'"');
                }
                write_timestamp(out, to_us(v, *unit));
                if style == Style::Json {
                    out.push(b'"');
                }
            }
            Column::Str(a) => match a.get(row) {
                Some(v) => write_str(out, v, style),
                None => write_null(out, style),
            },
            Column::Dict(keys, values) => {
                match (!keys.is_null(row))
                    .then(|| values.get(keys.value(row) as usize))
                    .flatten()
                {
                    Some(v) => write_str(out, v, style),
                    None => write_null(out, style),
                }
            }
            Column::Cast(a) => {
                if a.is_null(row) {
                    write_null(out, style)
                } else {
                    write_str(out, a.value(row), style);
                }
            }
            Column::Other(a) => {
                if a.is_null(row) {
                    write_null(out, style);
                    return;
                }
                let options = FormatOptions::default();
                match ArrayFormatter::try_new(a.as_ref(), &options) {
                    Ok(f) => write_str(out, &f.value(row).to_string(), style),
                    Err(_) => write_null(out, style),
                }
            }
        }
    }
}

/// Row `row` of every column, comma-separated.
fn write_row(cols: &[Column<'_>], row: usize, out: &mut Vec<u8>, style: Style) {
    for (i, c) in cols.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        c.write(row, out, style);
    }
}

fn columns(batch: &RecordBatch) -> Result<Vec<Column<'_>>, datafusion::arrow::error::ArrowError> {
    batch.columns().iter().map(Column::new).collect()
}

/// `{"query":..,"columns":[..],"timestamp":..,"dataset":[` — the head of an
/// `/exec` answer.
pub fn json_head(query: &str, schema: &Schema, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"query\":");
    write_str(out, query, Style::Json);
    out.extend_from_slice(b",\"columns\":[");
    for (i, f) in schema.fields().iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"name\":");
        write_str(out, f.name(), Style::Json);
        let _ = write!(out, ",\"type\":\"{}\"}}", questdb_type(f.data_type()));
    }
    let _ = write!(
        out,
        "],\"timestamp\":{},\"dataset\":[",
        timestamp_index(schema)
    );
}

/// Appends rows `rows` of `batch` as JSON arrays; `first` says whether any
/// row was written before.
pub fn json_rows(
    batch: &RecordBatch,
    rows: std::ops::Range<usize>,
    first: bool,
    out: &mut Vec<u8>,
) -> Result<(), datafusion::arrow::error::ArrowError> {
    let cols = columns(batch)?;
    for (n, row) in rows.enumerate() {
        if n > 0 || !first {
            out.push(b',');
        }
        out.push(b'[');
        write_row(&cols, row, out, Style::Json);
        out.push(b']');
    }
    Ok(())
}

/// `],"count":n}`.
pub fn json_tail(count: u64, out: &mut Vec<u8>) {
    let _ = write!(out, "],\"count\":{count}}}");
}

/// The CSV header line: every column name, quoted.
pub fn csv_header(schema: &Schema, out: &mut Vec<u8>) {
    for (i, f) in schema.fields().iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(f.name().replace('"', "\"\"").as_bytes());
        out.push(b'"');
    }
    out.push(b'\n');
}

/// Every row of `batch` as CSV lines.
pub fn csv_rows(
    batch: &RecordBatch,
    out: &mut Vec<u8>,
) -> Result<(), datafusion::arrow::error::ArrowError> {
    let cols = columns(batch)?;
    for row in 0..batch.num_rows() {
        write_row(&cols, row, out, Style::Csv);
        out.push(b'\n');
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_csv_quoting() {
        let mut out = Vec::new();
        write_timestamp(&mut out, 1_705_323_600_000_001);
        assert_eq!(out, b"2024-01-15T13:00:00.000001Z");
        let mut out = Vec::new();
        write_str(&mut out, "a,\"b\"", Style::Csv);
        write_str(&mut out, "", Style::Csv);
        write_str(&mut out, "plain", Style::Csv);
        assert_eq!(String::from_utf8(out).unwrap(), "\"a,\"\"b\"\"\"\"\"plain");
    }
}
