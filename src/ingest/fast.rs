//! ILP text straight into column buffers, for lines shaped like one of the
//! last lines of their table.
//!
//! Clients send one table's lines with the same tags and fields in the same
//! order. After a line has gone through the general path (`ilp::parse_line`,
//! then the column mapping of `super`), its shape becomes one of the table's
//! [`Layout`]s (a few are kept, see `Pending::learn_shape`): each tag or field as the exact bytes that introduce it
//! (`,host=`, ` usage_user=`, `,temp=`), the column it goes to and how its
//! value is read. A following line is then matched against the layout byte
//! for byte and its values parsed straight from the buffer into a few
//! machine words, then appended to the batch's columns: no per-line or
//! per-field values, no name lookups, no UTF-8 pass over the whole text.
//!
//! Anything the layout does not describe — another field order, a missing
//! or extra field, an escape, a value of another type, a number the exact
//! parsers refuse, a line cut off by the end of the buffer, a blank line —
//! makes [`parse`] answer `None` before anything was written, and the
//! general path takes that line (and reports its error, if it has one).
//! Both paths share the number parsers, so a value is the same whichever
//! path reads it.

use crate::batch::BatchBuilder;
use crate::ilp::{self, Precision, BINARY_DOUBLE};
use crate::table::schema::{TIMESTAMP_MAX_US, TIMESTAMP_MIN_US};
use crate::table::ColumnType;

/// How one tag or field value is read and stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// A tag, or a string field, into a SYMBOL column.
    TagSymbol,
    /// A tag into a VARCHAR column.
    TagVarchar,
    /// A float (text or ILP v2 binary) into DOUBLE.
    Double,
    /// A float into FLOAT.
    Float,
    /// An `i` integer into LONG, INT, SHORT or BYTE (range-checked).
    Long,
    Int,
    Short,
    Byte,
    Boolean,
    /// A `t` (µs) or `n` (ns) timestamp field into TIMESTAMP.
    Timestamp,
    /// A quoted string into VARCHAR.
    StringVarchar,
    /// A quoted string into SYMBOL.
    StringSymbol,
}

impl Kind {
    /// The kind for a tag going into a column of type `ty`.
    pub(super) fn tag(ty: ColumnType) -> Option<Kind> {
        match ty {
            ColumnType::Symbol => Some(Kind::TagSymbol),
            ColumnType::Varchar => Some(Kind::TagVarchar),
            _ => None,
        }
    }

    /// The kind for a field of ILP type `value` going into a column of type
    /// `ty`; `None` for the rare pairs only the general path converts
    /// (an integer into DOUBLE, say).
    pub(super) fn field(ty: ColumnType, value: &ilp::FieldValue<'_>) -> Option<Kind> {
        use ilp::FieldValue as F;
        Some(match (ty, value) {
            (ColumnType::Double, F::Float(_)) => Kind::Double,
            (ColumnType::Float, F::Float(_)) => Kind::Float,
            (ColumnType::Long, F::Integer(_)) => Kind::Long,
            (ColumnType::Int, F::Integer(_)) => Kind::Int,
            (ColumnType::Short, F::Integer(_)) => Kind::Short,
            (ColumnType::Byte, F::Integer(_)) => Kind::Byte,
            (ColumnType::Boolean, F::Boolean(_)) => Kind::Boolean,
            (ColumnType::Timestamp, F::Timestamp(_)) => Kind::Timestamp,
            (ColumnType::Varchar, F::String(_)) => Kind::StringVarchar,
            (ColumnType::Symbol, F::String(_)) => Kind::StringSymbol,
            _ => return None,
        })
    }
}

/// One tag or field of a layout.
#[derive(Debug)]
pub(super) struct Entry {
    /// The bytes before the value: `,key=` (tags, and fields after the
    /// first) or ` key=` (the first field).
    pub prefix: Bytes,
    pub column: usize,
    pub kind: Kind,
}

impl Entry {
    /// The entry for a tag or field named `key`, introduced by `lead`
    /// (`,` or ` `).
    pub(super) fn new(lead: u8, key: &str, column: usize, kind: Kind) -> Entry {
        Entry {
            prefix: Bytes::new(&[&[lead], key.as_bytes(), b"="].concat()),
            column,
            kind,
        }
    }

    /// Whether this is the entry [`Entry::new`] makes of these.
    pub(super) fn is(&self, lead: u8, key: &str, column: usize, kind: Kind) -> bool {
        let p = self.prefix.as_slice();
        p.len() == key.len() + 2
            && p[0] == lead
            && &p[1..p.len() - 1] == key.as_bytes()
            && self.column == column
            && self.kind == kind
    }
}

/// The shape of a table's last line (see the module docs).
#[derive(Debug)]
pub(super) struct Layout {
    /// The table name as the line spelled it (no escapes).
    pub measurement: Bytes,
    pub entries: Vec<Entry>,
    /// Columns no entry sets, besides the designated timestamp: null.
    pub nulls: Vec<usize>,
    pub timestamp: Option<usize>,
    /// The batch's column count the layout was made for: a column added
    /// since makes it stale.
    pub columns: usize,
}

/// A value read by [`parse`]: the bits of a fixed-width value, or where a
/// string lies in the line.
#[derive(Clone, Copy, Default)]
pub(super) struct Slot {
    bits: u64,
    start: usize,
    end: usize,
}

/// Bytes that end an unquoted field value: `,` ` ` and newline, and `\r`
/// (of a `\r\n` line end; anywhere else the line then fits no layout).
static VALUE_END: [bool; 256] = {
    let mut t = [false; 256];
    t[b',' as usize] = true;
    t[b' ' as usize] = true;
    t[b'\n' as usize] = true;
    t[b'\r' as usize] = true;
    t
};

/// Bytes that end (or, for `\\`, escape) a tag value.
static TAG_END: [bool; 256] = {
    let mut t = [false; 256];
    t[b',' as usize] = true;
    t[b' ' as usize] = true;
    t[b'\n' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// The end of the value token at `b[i..]`: the index of its delimiter, or
/// `None` when the buffer ends first (the line may be incomplete).
#[inline]
fn token_end(b: &[u8], mut i: usize, end: &[bool; 256]) -> Option<usize> {
    while i < b.len() {
        if end[b[i] as usize] {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Bytes compared eight at a time: a short name's libc `memcmp` call costs
/// more than the compare. The last word is masked to the bytes' length.
#[derive(Debug)]
pub(super) struct Bytes {
    bytes: Box<[u8]>,
    /// (value, mask) of each little-endian 8-byte word of `bytes`.
    words: Box<[(u64, u64)]>,
}

impl Bytes {
    pub(super) fn new(bytes: &[u8]) -> Bytes {
        let words = bytes
            .chunks(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w[..c.len()].copy_from_slice(c);
                let mask = if c.len() == 8 {
                    u64::MAX
                } else {
                    (1u64 << (8 * c.len())) - 1
                };
                (u64::from_le_bytes(w), mask)
            })
            .collect();
        Bytes {
            bytes: bytes.into(),
            words,
        }
    }

    #[inline]
    pub(super) fn len(&self) -> usize {
        self.bytes.len()
    }

    pub(super) fn as_slice(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether `b[i..]` starts with these bytes.
    #[inline]
    pub(super) fn at(&self, b: &[u8], i: usize) -> bool {
        // Whole words can be read past the bytes' end (the line goes on).
        let Some(s) = b.get(i..i + self.words.len() * 8) else {
            return b.get(i..i + self.bytes.len()) == Some(&self.bytes[..]);
        };
        s.chunks_exact(8)
            .zip(self.words.iter())
            .all(|(c, &(v, m))| u64::from_le_bytes(c.try_into().unwrap_or_default()) & m == v)
    }

    /// Whether `b` is exactly these bytes.
    #[inline]
    pub(super) fn is(&self, b: &[u8]) -> bool {
        b.len() == self.bytes.len() && self.at(b, 0)
    }
}

/// Where the table name at the start of `b` ends (at its `,` or ` `), if it
/// has no escapes and the line goes on.
#[inline]
pub(super) fn measurement_end(b: &[u8]) -> Option<usize> {
    let i = token_end(b, 0, &TAG_END)?;
    (i > 0 && matches!(b[i], b',' | b' ')).then_some(i)
}

/// `[-]digits` at `b[i..]`, at most 19 digits (a nanosecond timestamp has
/// 19): the value and the index of the first byte after the digits. `None`
/// when there is no digit, more than 19, the value overflows i64, or the
/// buffer ends in the digits.
#[inline]
fn int_at(b: &[u8], i: usize) -> Option<(i64, usize)> {
    let neg = b.get(i) == Some(&b'-');
    let start = i + neg as usize;
    let mut j = start;
    // 19 digits fit a u64.
    let mut v: u64 = 0;
    loop {
        let d = b.get(j)?.wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        if j - start == 19 {
            return None;
        }
        v = v * 10 + u64::from(d);
        j += 1;
    }
    if j == start {
        return None;
    }
    let v = if neg {
        // Down to i64::MIN, whose magnitude is one more than i64::MAX.
        (v <= i64::MIN.unsigned_abs()).then(|| (v as i64).wrapping_neg())?
    } else {
        i64::try_from(v).ok()?
    };
    Some((v, j))
}

/// A float field value at `b[i..]`: the value and the index of its
/// delimiter. `[-]digits.digits` with at most 15 digits is read here in one
/// pass (exact: the mantissa and the power of ten are exact doubles, so one
/// division rounds correctly); anything else goes to [`ilp::parse_float`],
/// the general path's parser, so both paths read every text the same.
#[inline]
fn float_at(b: &[u8], i: usize) -> Option<(f64, usize)> {
    let neg = b.get(i) == Some(&b'-');
    let start = i + neg as usize;
    let mut j = start;
    let mut m: u64 = 0;
    let mut dot = usize::MAX;
    while let Some(&c) = b.get(j) {
        let d = c.wrapping_sub(b'0');
        if d < 10 {
            m = m.wrapping_mul(10).wrapping_add(u64::from(d));
        } else if c == b'.' && dot == usize::MAX {
            dot = j;
        } else {
            break;
        }
        j += 1;
    }
    let delimiter = *b.get(j)?;
    let digits = j - start - (dot != usize::MAX) as usize;
    let simple = VALUE_END[delimiter as usize]
        && (1..=15).contains(&digits)
        && (dot == usize::MAX || (dot > start && dot + 1 < j));
    if simple {
        let frac = if dot == usize::MAX { 0 } else { j - dot - 1 };
        let v = m as f64 / ilp::POW10[frac];
        return Some((if neg { -v } else { v }, j));
    }
    let end = token_end(b, i, &VALUE_END)?;
    let text = std::str::from_utf8(&b[i..end]).ok()?;
    if matches!(text.as_bytes().first(), Some(b't' | b'T' | b'f' | b'F')) {
        return None;
    }
    Some((ilp::parse_float(text)?, end))
}

/// Reads the line at the start of `b`, whose table name (`layout`'s)
/// ends at `i`, into `slots` (one per entry); returns the bytes the line
/// takes with its newline and its designated timestamp in µs (`now_us`
/// when it has none). `None`: the line does not fit the layout, or is not
/// all in `b`; nothing was written.
#[inline]
pub(super) fn parse(
    layout: &Layout,
    b: &[u8],
    mut i: usize,
    precision: Precision,
    now_us: i64,
    slots: &mut Vec<Slot>,
) -> Option<(usize, i64)> {
    slots.clear();
    for e in &layout.entries {
        if !e.prefix.at(b, i) {
            return None;
        }
        i += e.prefix.len();
        let mut slot = Slot::default();
        i = match e.kind {
            Kind::TagSymbol | Kind::TagVarchar => {
                let mut end = i;
                let mut high = 0u8;
                while !TAG_END[*b.get(end)? as usize] {
                    high |= b[end];
                    end += 1;
                }
                if end == i || !matches!(b[end], b',' | b' ') {
                    return None;
                }
                // ASCII is UTF-8; anything else is checked.
                if high >= 0x80 {
                    std::str::from_utf8(&b[i..end]).ok()?;
                }
                slot.start = i;
                slot.end = end;
                end
            }
            Kind::Double | Kind::Float if b.get(i) == Some(&b'=') => {
                // ILP v2: `==`, type 16, 8 bytes little-endian.
                if b.get(i + 1) != Some(&BINARY_DOUBLE) {
                    return None;
                }
                let v = f64::from_le_bytes(b.get(i + 2..i + 10)?.try_into().ok()?);
                slot.bits = float_bits(e.kind, v);
                i + 10
            }
            Kind::Double | Kind::Float => {
                let (v, end) = float_at(b, i)?;
                slot.bits = float_bits(e.kind, v);
                end
            }
            Kind::Long | Kind::Int | Kind::Short | Kind::Byte => {
                let (v, end) = match int_at(b, i) {
                    Some((v, j)) if b.get(j) == Some(&b'i') => (v, j + 1),
                    _ => {
                        // Not a plain integer: the general parser decides.
                        let end = token_end(b, i, &VALUE_END)?;
                        let digits = b[i..end].strip_suffix(b"i")?;
                        (ilp::parse_int(digits)?, end)
                    }
                };
                if !VALUE_END[*b.get(end)? as usize] {
                    return None;
                }
                let fits = match e.kind {
                    Kind::Int => i32::try_from(v).is_ok(),
                    Kind::Short => i16::try_from(v).is_ok(),
                    Kind::Byte => i8::try_from(v).is_ok(),
                    _ => true,
                };
                if !fits {
                    return None;
                }
                slot.bits = v as u64;
                end
            }
            Kind::Timestamp => {
                let end = token_end(b, i, &VALUE_END)?;
                let (&unit, digits) = b[i..end].split_last()?;
                let v = ilp::parse_int(digits)?;
                slot.bits = match unit {
                    b't' => v,
                    b'n' if digits.last().is_some_and(u8::is_ascii_digit) => v.div_euclid(1000),
                    _ => return None,
                } as u64;
                end
            }
            Kind::Boolean => {
                let end = token_end(b, i, &VALUE_END)?;
                slot.bits = match &b[i..end] {
                    b"t" | b"T" | b"true" | b"True" | b"TRUE" => 1,
                    b"f" | b"F" | b"false" | b"False" | b"FALSE" => 0,
                    _ => return None,
                };
                end
            }
            Kind::StringVarchar | Kind::StringSymbol => {
                if b.get(i) != Some(&b'"') {
                    return None;
                }
                let start = i + 1;
                let close = start + memchr::memchr2(b'"', b'\\', b.get(start..)?)?;
                if b[close] != b'"' {
                    return None;
                }
                std::str::from_utf8(&b[start..close]).ok()?;
                slot.start = start;
                slot.end = close;
                close + 1
            }
        };
        slots.push(slot);
    }
    // The line ends, or its timestamp follows.
    let (ts, end) = match *b.get(i)? {
        b'\n' => (now_us, i),
        b'\r' if b.get(i + 1) == Some(&b'\n') => (now_us, i + 1),
        b' ' => {
            let (v, mut j) = int_at(b, i + 1)?;
            let mut unit = precision;
            match b.get(j)? {
                b'n' => (unit, j) = (Precision::Nanos, j + 1),
                b't' => (unit, j) = (Precision::Micros, j + 1),
                _ => {}
            }
            if b.get(j) == Some(&b'\r') {
                j += 1;
            }
            if *b.get(j)? != b'\n' {
                return None;
            }
            (unit.to_micros(v)?, j)
        }
        _ => return None,
    };
    if layout.timestamp.is_some() && !(TIMESTAMP_MIN_US..=TIMESTAMP_MAX_US).contains(&ts) {
        return None;
    }
    Some((end + 1, ts))
}

#[inline]
fn float_bits(kind: Kind, v: f64) -> u64 {
    match kind {
        Kind::Float => u64::from((v as f32).to_bits()),
        _ => v.to_bits(),
    }
}

/// Appends the row [`parse`] read from `b` into `slots`.
#[inline]
pub(super) fn append(layout: &Layout, b: &[u8], slots: &[Slot], ts: i64, out: &mut BatchBuilder) {
    let text = |s: &Slot| {
        let bytes = &b[s.start..s.end];
        // SAFETY: `parse` checked these bytes as UTF-8 (or as ASCII) and
        // the caller passes the same `b` it parsed.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    };
    for (e, s) in layout.entries.iter().zip(slots) {
        let c = e.column;
        match e.kind {
            Kind::TagSymbol | Kind::StringSymbol => out.push_raw_symbol(c, text(s)),
            Kind::TagVarchar | Kind::StringVarchar => out.push_raw_str(c, text(s)),
            Kind::Double | Kind::Long | Kind::Timestamp => {
                out.push_raw_fixed(c, s.bits.to_le_bytes())
            }
            Kind::Float | Kind::Int => out.push_raw_fixed(c, (s.bits as u32).to_le_bytes()),
            Kind::Short => out.push_raw_fixed(c, (s.bits as u16).to_le_bytes()),
            Kind::Byte | Kind::Boolean => out.push_raw_fixed(c, [s.bits as u8]),
        }
    }
    for &c in &layout.nulls {
        out.push_raw_null(c);
    }
    if let Some(c) = layout.timestamp {
        out.push_raw_fixed(c, ts.to_le_bytes());
    }
    out.end_raw_row();
}
