use super::*;

fn parse(line: &str) -> Result<Line<'_>, IlpError> {
    let mut out = Line::default();
    parse_line(line.as_bytes(), Precision::Nanos, &mut out).map(|_| out)
}

fn err(line: &str) -> IlpError {
    parse(line).expect_err(line)
}

#[test]
fn a_full_line() {
    let l = parse("cpu,host=h1,region=eu usage=0.5,requests=12i,ok=t,name=\"x y\",at=1700000000000000t 1700000000123456789").unwrap();
    assert_eq!(l.measurement, "cpu");
    assert_eq!(
        l.tags,
        vec![("host".into(), "h1".into()), ("region".into(), "eu".into())]
    );
    assert_eq!(
        l.fields,
        vec![
            ("usage".into(), FieldValue::Float(0.5)),
            ("requests".into(), FieldValue::Integer(12)),
            ("ok".into(), FieldValue::Boolean(true)),
            ("name".into(), FieldValue::String("x y".into())),
            ("at".into(), FieldValue::Timestamp(1_700_000_000_000_000)),
        ]
    );
    assert_eq!(l.timestamp, Some(1_700_000_000_123_456));
}

#[test]
fn no_tags_no_timestamp() {
    let l = parse("m v=1").unwrap();
    assert_eq!(l.measurement, "m");
    assert!(l.tags.is_empty());
    assert_eq!(l.fields, vec![("v".into(), FieldValue::Float(1.0))]);
    assert_eq!(l.timestamp, None);
}

#[test]
fn every_boolean_spelling() {
    for (s, v) in [
        ("t", true),
        ("T", true),
        ("true", true),
        ("True", true),
        ("TRUE", true),
        ("f", false),
        ("F", false),
        ("false", false),
        ("False", false),
        ("FALSE", false),
    ] {
        let line = format!("m b={s}");
        assert_eq!(
            parse(&line).unwrap().fields[0].1,
            FieldValue::Boolean(v),
            "{s}"
        );
    }
    assert!(matches!(
        err("m b=tru").kind,
        IlpErrorKind::InvalidFieldValue(_)
    ));
}

#[test]
fn floats_and_integers() {
    let cases = [
        ("1", FieldValue::Float(1.0)),
        ("-1.5", FieldValue::Float(-1.5)),
        ("1e3", FieldValue::Float(1000.0)),
        ("2.5E-2", FieldValue::Float(0.025)),
        (".5", FieldValue::Float(0.5)),
        ("Infinity", FieldValue::Float(f64::INFINITY)),
        ("-Infinity", FieldValue::Float(f64::NEG_INFINITY)),
        ("-9223372036854775808i", FieldValue::Integer(i64::MIN)),
        ("0i", FieldValue::Integer(0)),
        ("5n", FieldValue::Timestamp(0)),
        ("1500n", FieldValue::Timestamp(1)),
        ("-1t", FieldValue::Timestamp(-1)),
    ];
    for (s, v) in cases {
        assert_eq!(parse(&format!("m v={s}")).unwrap().fields[0].1, v, "{s}");
    }
    assert!(matches!(parse("m v=NaN").unwrap().fields[0].1, FieldValue::Float(f) if f.is_nan()));
    for bad in [
        "9223372036854775808i",
        "1.5i",
        "i",
        "abc",
        "1u",
        "nan",
        "inf",
        "0x10",
        "1..2",
        "--1",
    ] {
        assert!(
            matches!(
                err(&format!("m v={bad}")).kind,
                IlpErrorKind::InvalidFieldValue(_)
            ),
            "{bad} accepted"
        );
    }
}

#[test]
fn escaping_rules() {
    let l = parse(r#"my\ table\,x,ta\ g\=k=v\,a\ l\=ue fi\=e\ ld\,=1i"#).unwrap();
    assert_eq!(l.measurement, "my table,x");
    assert_eq!(l.tags, vec![("ta g=k".into(), "v,a l=ue".into())]);
    assert_eq!(l.fields[0].0, "fi=e ld,");
    // Equals needs no escape in a measurement; other backslashes stay.
    let l = parse(r#"a=b\x v="q\"uo\\te\d""#).unwrap();
    assert_eq!(l.measurement, r"a=b\x");
    assert_eq!(l.fields[0].1, FieldValue::String(r#"q"uo\te\d"#.into()));
    // Names without escapes are borrowed, not copied.
    let l = parse("cpu,h=x v=\"s\"").unwrap();
    assert!(matches!(l.measurement, Cow::Borrowed(_)));
    assert!(matches!(
        l.fields[0].1,
        FieldValue::String(Cow::Borrowed(_))
    ));
}

#[test]
fn strings_may_hold_newlines_commas_spaces_and_equals() {
    let buf = b"m s=\"line one\nline, two = x\" 10\nm s=\"b\" 20\n";
    let (first, used) = next_line(buf).unwrap();
    let mut l = Line::default();
    parse_line(first, Precision::Nanos, &mut l).unwrap();
    assert_eq!(
        l.fields[0].1,
        FieldValue::String("line one\nline, two = x".into())
    );
    let (second, used2) = next_line(&buf[used..]).unwrap();
    assert_eq!(second, b"m s=\"b\" 20");
    assert_eq!(used + used2, buf.len());
    assert!(next_line(b"m v=1").is_none(), "no newline yet: incomplete");
    assert_eq!(next_line(b"m v=1\r\n").unwrap().0, b"m v=1");
    // A backslash before a newline escapes it (the slow path, as before).
    assert_eq!(next_line(b"m\\\nx v=1\ny").unwrap().0, b"m\\\nx v=1");
    // No quote or backslash: the first newline ends the line (fast path).
    assert_eq!(
        next_line(b"m,t=a v=1 5\nm v=2\n").unwrap(),
        (&b"m,t=a v=1 5"[..], 12)
    );
    // A quote in a measurement or tag is not a string.
    assert_eq!(
        next_line(b"m\"x,t=\"y v=1\nz").unwrap().0,
        b"m\"x,t=\"y v=1"
    );
}

#[test]
fn precisions() {
    let mut l = Line::default();
    for (p, v) in [
        (Precision::Nanos, 1_000_999),
        (Precision::Micros, 1_000_999_000),
        (Precision::Millis, 1_000_999_000_000),
        (Precision::Seconds, 1_000_999_000_000_000),
    ] {
        parse_line(b"m v=1 1000999", p, &mut l).unwrap();
        assert_eq!(l.timestamp, Some(v / 1000), "{p:?}");
    }
    assert_eq!(
        Precision::Nanos.to_micros(-1),
        Some(-1),
        "floors before the epoch"
    );
    for (s, p) in [
        ("n", Precision::Nanos),
        ("u", Precision::Micros),
        ("ms", Precision::Millis),
        ("s", Precision::Seconds),
    ] {
        assert_eq!(Precision::from_param(s), Some(p));
    }
    assert_eq!(Precision::from_param("h"), None);
    let e = parse_line(b"m v=1 9223372036854775807", Precision::Seconds, &mut l).unwrap_err();
    assert!(
        matches!(e.kind, IlpErrorKind::InvalidTimestamp(_)),
        "overflow is an error"
    );
}

#[test]
fn every_error_says_what_and_where() {
    let cases: [(&str, IlpErrorKind, usize); 12] = [
        ("", IlpErrorKind::MissingMeasurement, 0),
        (",t=1 v=1", IlpErrorKind::MissingMeasurement, 0),
        ("m", IlpErrorKind::MissingFields, 1),
        ("m ", IlpErrorKind::MissingFields, 2),
        ("m,t v=1", IlpErrorKind::MissingTagValue, 3),
        ("m,t= v=1", IlpErrorKind::MissingTagValue, 4),
        ("m,=x v=1", IlpErrorKind::EmptyName, 2),
        ("m v", IlpErrorKind::MissingFieldValue, 3),
        ("m v=1,=2", IlpErrorKind::EmptyName, 6),
        ("m v=\"abc", IlpErrorKind::UnterminatedString, 4),
        ("m v=1 12x", IlpErrorKind::InvalidTimestamp("12x".into()), 6),
        ("m v=1 12 13", IlpErrorKind::TrailingBytes, 8),
    ];
    for (line, kind, at) in cases {
        let e = err(line);
        assert_eq!((e.kind.clone(), e.position), (kind, at), "{line:?}: {e}");
        assert!(e.to_string().contains(&format!("byte {at}")), "{e}");
    }
    let e = err("m v=");
    assert!(matches!(e.kind, IlpErrorKind::InvalidFieldValue(_)));
    assert_eq!(e.to_string(), "invalid field value \"\" at byte 4");
    let e = parse_line(b"m\xff v=1", Precision::Nanos, &mut Line::default()).unwrap_err();
    assert_eq!((e.kind, e.position), (IlpErrorKind::NotUtf8, 1));
}

#[test]
fn blank_and_comment_lines() {
    assert!(is_blank(b""));
    assert!(is_blank(b"   "));
    assert!(is_blank(b"# a comment"));
    assert!(!is_blank(b"m v=1"));
}

#[test]
fn one_line_buffer_is_reused_without_growing() {
    let text = "cpu,host=a,region=b u=1,s=2,i=3i 1\n".repeat(100);
    let mut l = Line::default();
    let mut buf = text.as_bytes();
    let mut caps = None;
    while let Some((line, used)) = next_line(buf) {
        parse_line(line, Precision::Nanos, &mut l).unwrap();
        let now = (l.tags.capacity(), l.fields.capacity());
        assert!(caps.is_none_or(|c| c == now), "vectors reallocated");
        caps = Some(now);
        buf = &buf[used..];
    }
}

/// `name==` + type 16 + 8 bytes: a binary double (ILP protocol version 2).
fn binary_double(name: &str, v: f64) -> Vec<u8> {
    let mut b = format!("{name}==").into_bytes();
    b.push(BINARY_DOUBLE);
    b.extend_from_slice(&v.to_le_bytes());
    b
}

#[test]
fn binary_doubles_parse_whatever_bytes_they_hold() {
    // Values whose bytes hold a newline, a quote, a backslash, a space,
    // `=` and bytes that are not UTF-8.
    let values = [
        f64::from_le_bytes(*b"\n\"\\ =,\xff\x0a"),
        -0.0,
        1.5,
        f64::MAX,
        f64::from_bits(0x0a0a_0a0a_0a0a_0a0a),
    ];
    let mut buf = Vec::new();
    for v in values {
        buf.extend_from_slice(b"cpu,host=h1 ");
        buf.extend(binary_double("a", v));
        buf.extend_from_slice(b",n=3i,");
        buf.extend(binary_double("b", 2.0));
        buf.extend_from_slice(b" 1000\n");
    }
    let mut rest = &buf[..];
    let mut got = Vec::new();
    while let Some((line, used)) = next_line(rest) {
        let mut out = Line::default();
        parse_line(line, Precision::Nanos, &mut out).unwrap();
        assert_eq!(out.fields[1], ("n".into(), FieldValue::Integer(3)));
        assert_eq!(out.fields[2], ("b".into(), FieldValue::Float(2.0)));
        let FieldValue::Float(a) = out.fields[0].1 else {
            panic!("{:?}", out.fields)
        };
        got.push(a.to_bits());
        rest = &rest[used..];
    }
    assert!(rest.is_empty());
    assert_eq!(got, values.map(f64::to_bits));
}

#[test]
fn binary_values_cut_short_wait_for_more_or_are_refused() {
    let mut line = b"cpu ".to_vec();
    line.extend(binary_double("a", 1.0));
    // Not all of it yet (from the `==` on): no line.
    for cut in 7..line.len() {
        let mut part = line[..cut].to_vec();
        part.push(b'\n');
        if cut < line.len() {
            // The "newline" may be a payload byte: only a whole value ends.
            assert!(
                next_line(&part).is_none_or(|(l, _)| l.len() >= line.len()),
                "cut {cut}"
            );
        }
    }
    // The last line of a request, cut short: refused, with where.
    let mut out = Line::default();
    let e = parse_line(&line[..line.len() - 3], Precision::Nanos, &mut out).unwrap_err();
    assert!(e.to_string().contains("cut short"), "{e}");
}

#[test]
fn arrays_and_unknown_binary_types_are_refused_clearly() {
    // A 1-D array of two doubles: refused, and the line still ends where
    // the array does, so the next line parses.
    let mut buf = b"cpu a==".to_vec();
    buf.push(BINARY_ARRAY);
    buf.extend_from_slice(&[10, 1]);
    buf.extend_from_slice(&2u32.to_le_bytes());
    buf.extend_from_slice(&[b'\n'; 16]);
    buf.extend_from_slice(b"\ncpu b=1\n");
    let (line, used) = next_line(&buf).unwrap();
    assert_eq!(used, buf.len() - b"cpu b=1\n".len());
    let mut out = Line::default();
    let e = parse_line(line, Precision::Nanos, &mut out).unwrap_err();
    assert!(e.to_string().contains("arrays"), "{e}");
    assert_eq!(e.position, 6);
    let (line, _) = next_line(&buf[used..]).unwrap();
    assert_eq!(line, b"cpu b=1");
    let e = parse_line(b"cpu a==\x07xx", Precision::Nanos, &mut out).unwrap_err();
    assert!(e.to_string().contains("unknown binary value type 7"), "{e}");
}

#[test]
fn designated_timestamps_may_name_their_unit() {
    // ILP v2 clients append `n` (nanoseconds) or `t` (microseconds); the
    // request's precision applies to a bare number.
    let mut out = Line::default();
    parse_line(
        b"cpu a=1 1700000000123456789n",
        Precision::Seconds,
        &mut out,
    )
    .unwrap();
    assert_eq!(out.timestamp, Some(1_700_000_000_123_456));
    parse_line(b"cpu a=1 1700000000123456t", Precision::Seconds, &mut out).unwrap();
    assert_eq!(out.timestamp, Some(1_700_000_000_123_456));
    parse_line(b"cpu a=1 1700000000", Precision::Seconds, &mut out).unwrap();
    assert_eq!(out.timestamp, Some(1_700_000_000_000_000));
    assert!(parse_line(b"cpu a=1 12x", Precision::Nanos, &mut out).is_err());
    assert!(parse_line(b"cpu a=1 n", Precision::Nanos, &mut out).is_err());
}
