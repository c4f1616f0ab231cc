use super::ingress::{decode, Data, Session};
use super::*;

/// A message with a header around `payload`.
fn message(flags: u8, tables: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    start_message(&mut out, flags, tables);
    out.extend_from_slice(payload);
    finish_message(&mut out);
    out
}

#[test]
fn varints_round_trip_and_overlong_ones_are_refused() {
    for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
        let mut b = Vec::new();
        put_varint(&mut b, v);
        assert_eq!(Cursor::new(&b).varint("v").unwrap(), v);
    }
    let eleven = [0x80u8; 10].iter().copied().chain([0]).collect::<Vec<_>>();
    assert!(Cursor::new(&eleven).varint("v").is_err());
    let overflow = [0xffu8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
    assert!(Cursor::new(&overflow).varint("v").is_err());
}

/// The client's golden frame (questdb-rs 7 `m0-equivalent-buffer.hex`):
/// table `trades`, 10 rows of SYMBOL, LONG, DOUBLE and a designated
/// TIMESTAMP_NANOS.
#[test]
fn the_clients_golden_frame_decodes() {
    let mut p = Vec::new();
    put_varint(&mut p, 0);
    put_varint(&mut p, 10);
    for i in 0..10 {
        put_str(&mut p, &format!("SYM_{i:03}"));
    }
    put_str(&mut p, "trades");
    put_varint(&mut p, 10);
    put_varint(&mut p, 4);
    for (n, t) in [("sym", 9u8), ("qty", 5), ("px", 7), ("", 0x10)] {
        put_str(&mut p, n);
        p.push(t);
    }
    p.push(0);
    for i in 0..10 {
        put_varint(&mut p, i);
    }
    p.push(0);
    for i in 0..10i64 {
        p.extend_from_slice(&i.to_le_bytes());
    }
    p.push(0);
    for i in 0..10 {
        p.extend_from_slice(&(100.0 + f64::from(i)).to_le_bytes());
    }
    p.push(0);
    for i in 0..10i64 {
        p.extend_from_slice(&(1_700_000_000_000_000_000 + i).to_le_bytes());
    }
    let frame = message(FLAG_DELTA_SYMBOL_DICT, 1, &p);
    assert_eq!(frame.len(), 373, "the golden frame is 373 bytes");
    let msg = decode(&frame, 0).unwrap();
    assert_eq!(msg.delta.len(), 10);
    let t = &msg.tables[0];
    assert_eq!((t.name, t.rows, t.columns.len()), ("trades", 10, 4));
    let Data::Symbols(ids) = &t.columns[0].data else {
        panic!("symbols")
    };
    let mut s = Session::default();
    assert_eq!(s.symbol(&msg, ids[9]), "SYM_009");
    s.apply_delta(&msg);
    assert_eq!(s.dict_len(), 10);
}

#[test]
fn a_dictionary_gap_and_unknown_ids_are_refused() {
    let mut p = Vec::new();
    put_varint(&mut p, 3); // starts past an empty dictionary
    put_varint(&mut p, 0);
    let e = decode(&message(FLAG_DELTA_SYMBOL_DICT, 0, &p), 0).unwrap_err();
    assert_eq!(e.status, status::DICTIONARY_GAP, "{e:?}");

    let mut p = Vec::new();
    put_varint(&mut p, 0);
    put_varint(&mut p, 0);
    put_str(&mut p, "t");
    put_varint(&mut p, 1);
    put_varint(&mut p, 1);
    put_str(&mut p, "s");
    p.push(types::SYMBOL);
    p.push(0);
    put_varint(&mut p, 0); // id 0 of an empty dictionary
    let e = decode(&message(FLAG_DELTA_SYMBOL_DICT, 1, &p), 0).unwrap_err();
    assert_eq!(e.status, status::PARSE_ERROR);
    assert!(e.message.contains("symbol id 0"), "{}", e.message);
}

#[test]
fn truncated_and_padded_messages_say_where() {
    let mut p = Vec::new();
    put_varint(&mut p, 0);
    put_varint(&mut p, 0);
    put_str(&mut p, "t");
    put_varint(&mut p, 2);
    put_varint(&mut p, 1);
    put_str(&mut p, "x");
    p.push(types::LONG);
    p.push(0);
    p.extend_from_slice(&1i64.to_le_bytes()); // one value of two
    let e = decode(&message(FLAG_DELTA_SYMBOL_DICT, 1, &p), 0).unwrap_err();
    assert!(
        e.message.contains("column \"x\"") && e.message.contains("at byte"),
        "{}",
        e.message
    );
    let mut frame = message(FLAG_DELTA_SYMBOL_DICT, 0, &[0, 0]);
    frame.push(0);
    let e = decode(&frame, 0).unwrap_err();
    assert!(e.message.contains("payload length"), "{}", e.message);
    let e = decode(b"HTTP/1.1 200 OK", 0).unwrap_err();
    assert!(e.message.contains("magic"), "{}", e.message);
}

#[test]
fn gorilla_timestamps_decode() {
    // 5 timestamps: 1000, 2000, 3000 (dod 0), 4010 (dod 10), 5020 (dod 0).
    let ts = [1000i64, 2000, 3000, 4010, 5020];
    let mut p = Vec::new();
    put_varint(&mut p, 0);
    put_varint(&mut p, 0);
    put_str(&mut p, "t");
    put_varint(&mut p, 5);
    put_varint(&mut p, 1);
    put_str(&mut p, "");
    p.push(types::TIMESTAMP);
    p.push(0); // no nulls
    p.push(1); // Gorilla
    p.extend_from_slice(&ts[0].to_le_bytes());
    p.extend_from_slice(&ts[1].to_le_bytes());
    // Bits, LSB first: 0 | 1,0 + 7-bit 10 | 0
    let bits: Vec<u8> = [0u8, 1, 0]
        .into_iter()
        .chain((0..7).map(|i| (10u8 >> i) & 1))
        .chain([0])
        .collect();
    let mut bytes = vec![0u8; bits.len().div_ceil(8)];
    for (i, b) in bits.iter().enumerate() {
        bytes[i / 8] |= b << (i % 8);
    }
    p.extend_from_slice(&bytes);
    let frame = message(FLAG_DELTA_SYMBOL_DICT | FLAG_GORILLA, 1, &p);
    let msg = decode(&frame, 0).unwrap();
    let Data::Decoded(v) = &msg.tables[0].columns[0].data else {
        panic!("decoded")
    };
    assert_eq!(v, &ts);
}

#[test]
fn server_info_has_the_layout_clients_read() {
    let b = server_info(&ServerInfo {
        role: Role::Replica,
        epoch: 7,
        capabilities: CAP_QUERY_FLAGS,
        wall_ns: 1,
        cluster_id: "basalt".into(),
        node_id: "n".into(),
    });
    assert_eq!(&b[..4], b"QWP1");
    assert_eq!(
        u32::from_le_bytes(b[8..12].try_into().unwrap()) as usize,
        b.len() - 12
    );
    assert_eq!((b[12], b[13]), (0x18, 2));
    assert_eq!(b.len(), 12 + 1 + 1 + 8 + 4 + 8 + 2 + 6 + 2 + 1);
}
