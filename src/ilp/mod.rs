//! InfluxDB Line Protocol, as QuestDB accepts it.
//!
//! ```text
//! measurement[,tag=value...] field=value[,field=value...] [timestamp]\n
//! ```
//!
//! - measurement: `\,` and `\ ` escape comma and space;
//! - tag keys, tag values and field keys: `\,` `\=` `\ ` escape comma, equals, space;
//! - field values: float (`1.5`, `-2e10`, `NaN`, `Infinity`), integer `12i`,
//!   string `"..."` (`\"` and `\\` escaped; newlines allowed inside), boolean
//!   `t T true True TRUE f F false False FALSE`, timestamp `123t` (µs) or `123n` (ns);
//! - a backslash before any other byte is kept as it is;
//! - lines end with `\n` (a preceding `\r` is dropped); empty lines and lines
//!   starting with `#` are skipped;
//! - the trailing timestamp is in the request's precision (nanoseconds by
//!   default); without one the server's clock is used.
//!
//! Parsing borrows from the input: a name or string is copied only when it
//! contains escapes. [`Line`] keeps its vectors between lines, so parsing a
//! buffer allocates nothing per row once they have grown.
//!
//! This is the general parser. Servers read most lines through the fast
//! path of `crate::ingest` (lines shaped like their table's last line go
//! straight into the columns) and come here for the rest; both use
//! [`parse_int`] and [`parse_float`], so a value reads the same either way.

use std::borrow::Cow;
use std::fmt;

/// Unit of the designated timestamp at the end of a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Nanos,
    Micros,
    Millis,
    Seconds,
}

impl Precision {
    /// Parses the `precision` query parameter of `/write` and `/api/v2/write`.
    pub fn from_param(p: &str) -> Option<Precision> {
        match p {
            "n" | "ns" => Some(Precision::Nanos),
            "u" | "us" | "µ" => Some(Precision::Micros),
            "ms" => Some(Precision::Millis),
            "s" => Some(Precision::Seconds),
            _ => None,
        }
    }

    /// Converts a timestamp in this precision to µs, `None` on overflow.
    pub fn to_micros(self, v: i64) -> Option<i64> {
        match self {
            Precision::Nanos => Some(v.div_euclid(1000)),
            Precision::Micros => Some(v),
            Precision::Millis => v.checked_mul(1000),
            Precision::Seconds => v.checked_mul(1_000_000),
        }
    }
}

/// A field value.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue<'a> {
    Float(f64),
    Integer(i64),
    String(Cow<'a, str>),
    Boolean(bool),
    /// µs since the epoch (`t` suffix; `n` values are converted).
    Timestamp(i64),
}

impl FieldValue<'_> {
    pub fn kind(&self) -> &'static str {
        match self {
            FieldValue::Float(_) => "float",
            FieldValue::Integer(_) => "integer",
            FieldValue::String(_) => "string",
            FieldValue::Boolean(_) => "boolean",
            FieldValue::Timestamp(_) => "timestamp",
        }
    }
}

/// One parsed line. Reuse it across the lines of a buffer.
#[derive(Debug, Default)]
pub struct Line<'a> {
    pub measurement: Cow<'a, str>,
    pub tags: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    pub fields: Vec<(Cow<'a, str>, FieldValue<'a>)>,
    /// Designated timestamp in µs, if the line has one.
    pub timestamp: Option<i64>,
}

impl Line<'_> {
    fn clear(&mut self) {
        self.measurement = Cow::Borrowed("");
        self.tags.clear();
        self.fields.clear();
        self.timestamp = None;
    }
}

/// What is wrong with a line, and where (byte offset within the line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IlpError {
    pub kind: IlpErrorKind,
    pub position: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IlpErrorKind {
    MissingMeasurement,
    MissingTagValue,
    MissingFieldValue,
    MissingFields,
    EmptyName,
    InvalidFieldValue(String),
    UnterminatedString,
    InvalidTimestamp(String),
    TrailingBytes,
    NotUtf8,
    /// A binary value (ILP protocol version 2) of a type basalt has no
    /// column for, or cut short.
    UnsupportedBinary(String),
}

impl fmt::Display for IlpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.position;
        match &self.kind {
            IlpErrorKind::MissingMeasurement => write!(f, "missing table name at byte {at}"),
            IlpErrorKind::MissingTagValue => write!(f, "tag without '=value' at byte {at}"),
            IlpErrorKind::MissingFieldValue => write!(f, "field without '=value' at byte {at}"),
            IlpErrorKind::MissingFields => write!(f, "line has no fields (at byte {at})"),
            IlpErrorKind::EmptyName => write!(f, "empty tag or field name at byte {at}"),
            IlpErrorKind::InvalidFieldValue(v) => {
                write!(f, "invalid field value {v:?} at byte {at}")
            }
            IlpErrorKind::UnterminatedString => write!(
                f,
                "string field value not closed with '\"' (opened at byte {at})"
            ),
            IlpErrorKind::InvalidTimestamp(v) => write!(f, "invalid timestamp {v:?} at byte {at}"),
            IlpErrorKind::TrailingBytes => {
                write!(f, "unexpected bytes after the timestamp at byte {at}")
            }
            IlpErrorKind::NotUtf8 => write!(f, "bytes are not UTF-8 at byte {at}"),
            IlpErrorKind::UnsupportedBinary(why) => write!(f, "{why} at byte {at}"),
        }
    }
}

impl std::error::Error for IlpError {}

/// Splits the next line off `buf`, honouring quoted strings (which may hold
/// newlines) and escapes. Returns (line without its `\n`/`\r\n`, bytes
/// consumed), or `None` when `buf` holds no complete line yet.
pub fn next_line(buf: &[u8]) -> Option<(&[u8], usize)> {
    // Common case: no quote or backslash before the first newline, which
    // then ends the line. Found with SIMD scans instead of a byte loop.
    let nl = memchr::memchr(b'\n', buf)?;
    // A binary value (`==` then a type byte, ILP v2) may hold any byte,
    // newlines included: such lines take the slow path, which skips it.
    if memchr::memchr2(b'"', b'\\', &buf[..nl]).is_none()
        && memchr::memmem::find(&buf[..nl], b"==").is_none()
    {
        let line = &buf[..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        return Some((line, nl + 1));
    }
    let mut in_string = false;
    let mut in_fields = false;
    let mut i = 0;
    while i < buf.len() {
        match buf[i] {
            b'\\' => i += 1,
            b'"' if in_fields => in_string = !in_string,
            b' ' if !in_string => in_fields = true,
            b'=' if in_fields && !in_string && buf.get(i + 1) == Some(&b'=') => {
                // A binary value: skip it whole (`None`: not all here yet).
                i += 1 + binary_len(&buf[i + 1..])?;
                continue;
            }
            b'\n' if !in_string => {
                let line = &buf[..i];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                return Some((line, i + 1));
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Type byte of a binary double (ILP protocol version 2): `==` + 16 + 8
/// bytes little-endian.
pub const BINARY_DOUBLE: u8 = 16;
/// Type byte of a binary array: `==` + 14 + element type + dimensions +
/// one u32 per dimension + the elements.
pub const BINARY_ARRAY: u8 = 14;
/// Element type of an array of doubles.
const ARRAY_OF_DOUBLES: u8 = 10;

/// Bytes of the binary value starting at `b` (its leading `=`, type byte
/// and payload); `None` when `b` does not hold all of it yet. A value of an
/// unknown type counts as its two header bytes (the parser refuses it).
fn binary_len(b: &[u8]) -> Option<usize> {
    match *b.get(1)? {
        BINARY_DOUBLE => (b.len() >= 10).then_some(10),
        BINARY_ARRAY => {
            let elem = *b.get(2)?;
            let dims = *b.get(3)? as usize;
            let mut n: u64 = 1;
            for d in 0..dims {
                let at = 4 + 4 * d;
                let dim = u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?);
                n = n.saturating_mul(u64::from(dim));
            }
            let width = if elem == ARRAY_OF_DOUBLES { 8 } else { 0 };
            let len = (4 + 4 * dims as u64).saturating_add(n.saturating_mul(width));
            let len = usize::try_from(len).ok()?;
            (b.len() >= len).then_some(len)
        }
        _ => Some(2),
    }
}

/// Whether a line carries no data (empty, white space, or a `#` comment).
pub fn is_blank(line: &[u8]) -> bool {
    let t = line.trim_ascii();
    t.is_empty() || t[0] == b'#'
}

/// Bytes that end or escape a name: `,` ` ` `=` `\\` and newline.
static NAME_SPECIAL: [u8; 256] = {
    let mut t = [0u8; 256];
    t[b',' as usize] = 1;
    t[b' ' as usize] = 1;
    t[b'=' as usize] = 1;
    t[b'\\' as usize] = 1;
    t[b'\n' as usize] = 1;
    t
};

/// Walks one line. The line is checked for UTF-8 once; every token ends at
/// an ASCII delimiter, so slicing `s` at token bounds never splits a char.
struct Cursor<'a> {
    /// The line as text, when it was checked as UTF-8 whole (no binary
    /// values in it); else each token is checked on its own.
    s: Option<&'a str>,
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// Bytes `a..z` of the line as text (they end at ASCII delimiters).
    fn text(&self, a: usize, z: usize) -> Result<&'a str, IlpError> {
        match self.s {
            Some(s) => Ok(&s[a..z]),
            None => std::str::from_utf8(&self.b[a..z]).map_err(|e| IlpError {
                kind: IlpErrorKind::NotUtf8,
                position: a + e.valid_up_to(),
            }),
        }
    }

    fn err(&self, kind: IlpErrorKind) -> IlpError {
        IlpError {
            kind,
            position: self.i,
        }
    }

    /// Reads a name up to an unescaped `,`, ` `, newline or (with
    /// `STOP_AT_EQUALS`) `=`, unescaping the bytes in `escapable`.
    fn name<const STOP_AT_EQUALS: bool>(
        &mut self,
        escapable: &[u8],
    ) -> Result<Cow<'a, str>, IlpError> {
        let start = self.i;
        let mut escaped = false;
        let b = self.b;
        let mut i = self.i;
        while i < b.len() {
            let c = b[i];
            if NAME_SPECIAL[c as usize] == 0 {
                i += 1;
                continue;
            }
            match c {
                b'\\' => {
                    if b.get(i + 1).is_some_and(|n| escapable.contains(n)) {
                        escaped = true;
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
                b'=' if !STOP_AT_EQUALS => i += 1,
                _ => break,
            }
        }
        self.i = i;
        Ok(unescape(self.text(start, i)?, escaped, escapable))
    }

    fn string_value(&mut self) -> Result<Cow<'a, str>, IlpError> {
        let open = self.i;
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            match self.peek() {
                None => {
                    return Err(IlpError {
                        kind: IlpErrorKind::UnterminatedString,
                        position: open,
                    })
                }
                Some(b'\\') if matches!(self.b.get(self.i + 1), Some(b'"' | b'\\')) => {
                    escaped = true;
                    self.i += 2;
                }
                Some(b'"') => break,
                Some(_) => self.i += 1,
            }
        }
        let raw = self.text(start, self.i)?;
        self.i += 1;
        Ok(unescape(raw, escaped, b"\"\\"))
    }

    fn field_value(&mut self) -> Result<FieldValue<'a>, IlpError> {
        if self.peek() == Some(b'"') {
            return Ok(FieldValue::String(self.string_value()?));
        }
        if self.peek() == Some(b'=') {
            return self.binary_value();
        }
        let start = self.i;
        let b = self.b;
        let mut i = self.i;
        // `,` ` ` newline end a value (`=` and `\\` do not, but are rare).
        while i < b.len() && (NAME_SPECIAL[b[i] as usize] == 0 || matches!(b[i], b'=' | b'\\')) {
            i += 1;
        }
        self.i = i;
        let text = self.text(start, self.i)?;
        let bad = || IlpError {
            kind: IlpErrorKind::InvalidFieldValue(text.to_string()),
            position: start,
        };
        let first = text.as_bytes().first().copied();
        let value = match text {
            "" => return Err(bad()),
            _ if !matches!(first, Some(b't' | b'T' | b'f' | b'F')) => {
                match text.as_bytes()[text.len() - 1] {
                    b'i' => FieldValue::Integer(
                        parse_int(&text.as_bytes()[..text.len() - 1]).ok_or_else(bad)?,
                    ),
                    b't' => FieldValue::Timestamp(
                        parse_int(&text.as_bytes()[..text.len() - 1]).ok_or_else(bad)?,
                    ),
                    b'n' if text.len() > 1 && text.as_bytes()[text.len() - 2].is_ascii_digit() => {
                        let ns = parse_int(&text.as_bytes()[..text.len() - 1]).ok_or_else(bad)?;
                        FieldValue::Timestamp(ns.div_euclid(1000))
                    }
                    _ => FieldValue::Float(parse_float(text).ok_or_else(bad)?),
                }
            }
            "t" | "T" | "true" | "True" | "TRUE" => FieldValue::Boolean(true),
            "f" | "F" | "false" | "False" | "FALSE" => FieldValue::Boolean(false),
            _ => match text.as_bytes()[text.len() - 1] {
                b'i' => FieldValue::Integer(
                    parse_int(&text.as_bytes()[..text.len() - 1]).ok_or_else(bad)?,
                ),
                b't' => FieldValue::Timestamp(
                    parse_int(&text.as_bytes()[..text.len() - 1]).ok_or_else(bad)?,
                ),
                b'n' if text.len() > 1 && text.as_bytes()[text.len() - 2].is_ascii_digit() => {
                    let ns = parse_int(&text.as_bytes()[..text.len() - 1]).ok_or_else(bad)?;
                    FieldValue::Timestamp(ns.div_euclid(1000))
                }
                _ => FieldValue::Float(parse_float(text).ok_or_else(bad)?),
            },
        };
        Ok(value)
    }
}

impl<'a> Cursor<'a> {
    /// A binary value (ILP protocol version 2), at its second `=`.
    fn binary_value(&mut self) -> Result<FieldValue<'a>, IlpError> {
        let at = self.i;
        let b = &self.b[at..];
        let refuse = |why: String| IlpError {
            kind: IlpErrorKind::UnsupportedBinary(why),
            position: at,
        };
        match b.get(1) {
            Some(&BINARY_DOUBLE) => {
                let v = b
                    .get(2..10)
                    .ok_or_else(|| refuse("binary double cut short".into()))?;
                self.i += 10;
                Ok(FieldValue::Float(f64::from_le_bytes(
                    v.try_into().expect("8 bytes"),
                )))
            }
            Some(&BINARY_ARRAY) => Err(refuse(
                "arrays (ILP protocol version 2) are not supported: basalt has no array \
                 column type"
                    .into(),
            )),
            Some(t) => Err(refuse(format!("unknown binary value type {t}"))),
            None => Err(refuse("binary value without a type".into())),
        }
    }
}

/// `raw` as UTF-8 (`start` is its offset in the line, for errors), with
/// `\x` turned into `x` for every `x` in `escapable` when `escaped` says
/// the scan saw one. Borrowed when there is nothing to unescape.
#[inline]
fn unescape<'a>(s: &'a str, escaped: bool, escapable: &[u8]) -> Cow<'a, str> {
    if !escaped {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(&n) = chars.peek() {
                if n.is_ascii() && escapable.contains(&(n as u8)) {
                    out.push(n);
                    chars.next();
                    continue;
                }
            }
        }
        out.push(c);
    }
    Cow::Owned(out)
}

/// A decimal integer with an optional `-`; `None` on anything else or overflow.
pub(crate) fn parse_int(b: &[u8]) -> Option<i64> {
    let (neg, digits) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        _ => (false, b),
    };
    if digits.is_empty() {
        return None;
    }
    // Accumulate negatively so i64::MIN parses too.
    let mut v: i64 = 0;
    for &d in digits {
        let d = d.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v.checked_mul(10)?.checked_sub(i64::from(d))?;
    }
    if neg {
        Some(v)
    } else {
        v.checked_neg()
    }
}

/// Powers of ten exactly representable as f64.
pub(crate) const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// `[-]digits[.digits]` with at most 15 significant digits: the mantissa
/// and the power of ten are exact f64s, so one IEEE division gives the
/// correctly rounded value (Clinger's fast path). `None` sends the text to
/// the general parser.
#[inline]
fn parse_simple_decimal(s: &[u8]) -> Option<f64> {
    let (neg, b) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    if b.is_empty() || b.len() > 17 {
        return None;
    }
    let mut mantissa: u64 = 0;
    let mut digits = 0;
    let mut frac: Option<usize> = None;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + u64::from(c - b'0');
                digits += 1;
            }
            b'.' if frac.is_none() && i > 0 && i + 1 < b.len() => frac = Some(b.len() - i - 1),
            _ => return None,
        }
    }
    if digits > 15 {
        return None;
    }
    let v = mantissa as f64 / POW10[frac.unwrap_or(0)];
    Some(if neg { -v } else { v })
}

pub(crate) fn parse_float(s: &str) -> Option<f64> {
    if let Some(v) = parse_simple_decimal(s.as_bytes()) {
        return Some(v);
    }
    match s {
        "NaN" => Some(f64::NAN),
        "Infinity" | "+Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        // Rust's parser also takes "inf", "infinity" and "nan" in any case
        // (signed too); none of those ends in a digit or '.', and every
        // number ILP allows does.
        _ if s
            .as_bytes()
            .last()
            .is_some_and(|b| b.is_ascii_digit() || *b == b'.') =>
        {
            s.parse().ok()
        }
        _ => None,
    }
}

/// Parses one line (without its newline) into `out`.
pub fn parse_line<'a>(
    line: &'a [u8],
    precision: Precision,
    out: &mut Line<'a>,
) -> Result<(), IlpError> {
    match std::str::from_utf8(line) {
        Ok(s) => parse_line_str(s, precision, out),
        // Binary values (ILP v2) are not UTF-8: each token is checked.
        Err(_) if memchr::memmem::find(line, b"==").is_some() => parse_cursor(
            Cursor {
                s: None,
                b: line,
                i: 0,
            },
            precision,
            out,
        ),
        Err(e) => Err(IlpError {
            kind: IlpErrorKind::NotUtf8,
            position: e.valid_up_to(),
        }),
    }
}

/// [`parse_line`] for a line already known to be UTF-8 (a caller that
/// checked a whole buffer at once).
pub fn parse_line_str<'a>(
    s: &'a str,
    precision: Precision,
    out: &mut Line<'a>,
) -> Result<(), IlpError> {
    parse_cursor(
        Cursor {
            s: Some(s),
            b: s.as_bytes(),
            i: 0,
        },
        precision,
        out,
    )
}

fn parse_cursor<'a>(
    mut c: Cursor<'a>,
    precision: Precision,
    out: &mut Line<'a>,
) -> Result<(), IlpError> {
    out.clear();
    out.measurement = c.name::<false>(b", ")?;
    if out.measurement.is_empty() {
        return Err(c.err(IlpErrorKind::MissingMeasurement));
    }
    while c.peek() == Some(b',') {
        c.i += 1;
        let at = c.i;
        let key = c.name::<true>(b",= ")?;
        if key.is_empty() {
            return Err(IlpError {
                kind: IlpErrorKind::EmptyName,
                position: at,
            });
        }
        if c.peek() != Some(b'=') {
            return Err(c.err(IlpErrorKind::MissingTagValue));
        }
        c.i += 1;
        let value = c.name::<false>(b",= ")?;
        if value.is_empty() {
            return Err(c.err(IlpErrorKind::MissingTagValue));
        }
        out.tags.push((key, value));
    }
    if c.peek() != Some(b' ') {
        return Err(c.err(IlpErrorKind::MissingFields));
    }
    c.i += 1;
    loop {
        let at = c.i;
        let key = c.name::<true>(b",= ")?;
        if key.is_empty() {
            return Err(
                if out.fields.is_empty() && c.peek().is_none_or(|b| b == b' ') {
                    IlpError {
                        kind: IlpErrorKind::MissingFields,
                        position: at,
                    }
                } else {
                    IlpError {
                        kind: IlpErrorKind::EmptyName,
                        position: at,
                    }
                },
            );
        }
        if c.peek() != Some(b'=') {
            return Err(c.err(IlpErrorKind::MissingFieldValue));
        }
        c.i += 1;
        let value = c.field_value()?;
        out.fields.push((key, value));
        match c.peek() {
            Some(b',') => c.i += 1,
            _ => break,
        }
    }
    match c.peek() {
        None => return Ok(()),
        Some(b' ') => c.i += 1,
        Some(_) => return Err(c.err(IlpErrorKind::TrailingBytes)),
    }
    let start = c.i;
    let text = c.text(start, c.b.len())?.trim_ascii_end();
    if text.is_empty() {
        return Ok(());
    }
    let bad = || IlpError {
        kind: IlpErrorKind::InvalidTimestamp(text.to_string()),
        position: start,
    };
    if let Some(space) = text.find(' ') {
        return Err(IlpError {
            kind: IlpErrorKind::TrailingBytes,
            position: start + space,
        });
    }
    // ILP v2 clients name the unit: `n` nanoseconds, `t` microseconds.
    let (digits, precision) = match text.as_bytes().last() {
        Some(b'n') => (&text[..text.len() - 1], Precision::Nanos),
        Some(b't') => (&text[..text.len() - 1], Precision::Micros),
        _ => (text, precision),
    };
    let v = parse_int(digits.as_bytes()).ok_or_else(bad)?;
    out.timestamp = Some(precision.to_micros(v).ok_or_else(bad)?);
    Ok(())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod float_tests {
    use proptest::prelude::*;

    proptest! {
        /// The fast path agrees with Rust's correctly rounded parser.
        #[test]
        fn simple_decimals_parse_exactly(int in 0u64..10_000_000, frac in 0u64..100_000_000, neg in any::<bool>(), w in 0usize..9) {
            let text = format!("{}{int}.{frac:0w$}", if neg { "-" } else { "" });
            let want: f64 = text.parse().unwrap();
            prop_assert_eq!(super::parse_float(&text).map(f64::to_bits), Some(want.to_bits()), "{}", text);
        }

        #[test]
        fn any_float_text_round_trips(v in any::<f64>().prop_filter("finite", |v| v.is_finite())) {
            let text = format!("{v:?}");
            prop_assert_eq!(super::parse_float(&text).map(f64::to_bits), Some(v.to_bits()), "{}", text);
        }
    }

    #[test]
    fn edge_cases() {
        for t in [
            "0.1",
            "-0.0",
            "0",
            "1.",
            "5",
            "123456789012345",
            "1234567890123456",
            "0.30000000000000004",
            "9007199254740993",
        ] {
            let want: f64 = t.parse().unwrap();
            assert_eq!(
                super::parse_float(t).map(f64::to_bits),
                Some(want.to_bits()),
                "{t}"
            );
        }
        for t in [".", "-", "1..2", ".5e", "1-2", "--1"] {
            assert_eq!(super::parse_float(t), None, "{t}");
        }
        assert_eq!(super::parse_float(".5"), Some(0.5));
    }
}
