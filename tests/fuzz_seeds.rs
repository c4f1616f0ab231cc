//! The fuzz seed corpora in fuzz/corpus/ are real encodings made by this
//! code; this test keeps them decodable. `BASALT_WRITE_SEEDS=1 cargo test
//! --test fuzz_seeds` rewrites them after a format change.

use std::path::PathBuf;

use basalt::batch::{codec, BatchBuilder, Value};
use basalt::gen::CpuGenerator;
use basalt::table::{ColumnType, PartitionBy, Schema};
use basalt::wal::format::{self, RecordHeader, Tail, FLAG_GROUP_END, SCHEMA_VERSION};

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn all_types() -> Schema {
    let cols: Vec<(&str, ColumnType)> = ColumnType::ALL.iter().map(|t| (t.name(), *t)).collect();
    Schema::new(cols, Some("TIMESTAMP"), PartitionBy::Day).unwrap()
}

fn payload_seeds() -> Vec<(String, Vec<u8>)> {
    let mut cpu = vec![0u8];
    codec::encode(&CpuGenerator::default().batch(0, 3, 0), &mut cpu);
    let schema = all_types();
    let mut b = BatchBuilder::new(&schema);
    let row = [
        Value::Boolean(true),
        Value::Byte(-1),
        Value::Short(300),
        Value::Int(-7),
        Value::Long(1 << 40),
        Value::Float(0.5),
        Value::Double(-2.5),
        Value::Timestamp(12),
        Value::Symbol("s"),
        Value::Varchar("v\u{e9}"),
    ];
    for (i, v) in row.iter().enumerate() {
        b.set(i, *v).unwrap();
    }
    b.finish_row().unwrap();
    b.set(7, Value::Timestamp(13)).unwrap();
    b.finish_row().unwrap();
    let mut all = vec![1u8];
    codec::encode(&b.finish(), &mut all);
    vec![
        ("cpu_3_rows".into(), cpu),
        ("all_types_with_nulls".into(), all),
    ]
}

fn wal_seed() -> Vec<u8> {
    let mut f = format::encode_file_header(0, 0).to_vec();
    let gen = CpuGenerator::default();
    for (group, txns) in [(0u64, 1..3u64), (1, 3..4)] {
        let start = f.len() as u64;
        for txn in txns.clone() {
            let mut payload = Vec::new();
            codec::encode(&gen.batch(txn * 2, 2, 0), &mut payload);
            let h = RecordHeader {
                payload_len: payload.len() as u32,
                txn,
                commit_time_us: 1_700_000_000_000_000 + group as i64,
                group_start: start,
                row_count: 2,
                schema_version: SCHEMA_VERSION,
                flags: if txn + 1 == txns.end {
                    FLAG_GROUP_END
                } else {
                    0
                },
            };
            format::append_record(&mut f, &h, &payload);
        }
    }
    f
}

/// A `_wal/_aborted` file listing txns 3 and 9, as the shards write it.
fn aborted_seed() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    for t in [3, 9] {
        basalt::wal::retention::record_aborted(dir.path(), t).unwrap();
    }
    std::fs::read(dir.path().join(basalt::wal::retention::ABORTED_FILE)).unwrap()
}

/// A `_wal/_uploaded` mark, as the uploader writes it.
fn upload_mark_seed() -> Vec<u8> {
    use basalt::wal::retention::{write_upload_mark, UploadMark, UPLOAD_MARK_FILE};
    let dir = tempfile::tempdir().unwrap();
    let m = UploadMark {
        txn: 41,
        store_id: 7,
        segment_xxh3: Some(99),
        epoch: 2,
    };
    write_upload_mark(dir.path(), m).unwrap();
    std::fs::read(dir.path().join(UPLOAD_MARK_FILE)).unwrap()
}

/// Seeds of `metadata_decode`: the decoder byte, then a real encoding.
fn metadata_seeds() -> Vec<(String, Vec<u8>)> {
    use basalt::replication::snapshot::{self, Manifest, PartRef, TableSnapshot};
    use basalt::replication::{catalog, epoch};
    use basalt::table::state::{self, PartitionState, TableState};
    let schema = all_types();
    let meta = state::encode_meta(&schema, 0x1234);
    let st = TableState {
        txn: 7,
        partitions: vec![PartitionState {
            floor: 1_704_067_200_000_000,
            version: 2,
            rows: 3,
            min_ts: 1_704_067_200_000_001,
            max_ts: 1_704_067_200_000_009,
            columns: 10,
        }],
        symbol_counts: vec![(8, 2)],
    };
    let txn = state::encode_txn(&st);
    let part = snapshot::encode_part(&[("a.d", b"values"), ("a.v", &[0x07])]);
    let manifest = snapshot::encode_manifest(&Manifest {
        seq: 3,
        epoch: 2,
        started_us: 1,
        cut_us: 2,
        completed_us: 3,
        tables: vec![TableSnapshot {
            name: "t".into(),
            table_id: 0x1234,
            txn: 7,
            meta: meta.clone(),
            state: txn.clone(),
            block_rows: snapshot::BLOCK_ROWS,
            symbols: vec![PartRef {
                key: "snapshots/parts/0000000000001234/00.part".into(),
                bytes: 9,
                xxh3: 1,
            }],
            partitions: vec![vec![PartRef {
                key: "snapshots/parts/0000000000001234/01.part".into(),
                bytes: part.len() as u64,
                xxh3: 2,
            }]],
        }],
    });
    let entry = catalog::encode(&catalog::Entry::Table(catalog::Announcement {
        table: "t".into(),
        table_id: 0x1234,
        epoch: 2,
        schema: Some(schema.clone()),
    }));
    let claim = epoch::encode(&epoch::Claim {
        epoch: 2,
        node: "host:/data".into(),
        claimed_at_us: 5,
    });
    [
        ("meta", 0u8, meta),
        ("txn", 1, txn),
        ("manifest", 2, manifest),
        ("part", 3, part),
        ("catalog_entry", 4, entry),
        ("epoch_claim", 5, claim),
        ("aborted", 6, aborted_seed()),
        ("upload_mark", 7, upload_mark_seed()),
    ]
    .into_iter()
    .map(|(n, k, b)| {
        let mut v = vec![k];
        v.extend(b);
        (n.to_string(), v)
    })
    .collect()
}

#[test]
fn committed_fuzz_seeds_are_valid_encodings() {
    let write = std::env::var_os("BASALT_WRITE_SEEDS").is_some();
    std::fs::create_dir_all(corpus("metadata_decode")).unwrap();
    for (name, bytes) in metadata_seeds() {
        let path = corpus("metadata_decode").join(&name);
        if write {
            std::fs::write(&path, &bytes).unwrap();
        }
        let seed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let b = &seed[1..];
        let ok = match seed[0] {
            0 => basalt::table::state::decode_meta(std::path::Path::new("_meta"), b).is_ok(),
            1 => basalt::table::state::decode_txn(std::path::Path::new("_txn"), b).is_ok(),
            2 => basalt::replication::snapshot::decode_manifest(b).is_ok(),
            3 => {
                let at = basalt::replication::snapshot::part_checksum_at(b).unwrap();
                let want = basalt::replication::snapshot::PartRef {
                    key: "k".into(),
                    bytes: b.len() as u64,
                    xxh3: u64::from_le_bytes(b[at..at + 8].try_into().unwrap()),
                };
                basalt::replication::snapshot::decode_part(b, &want).is_ok()
            }
            4 => basalt::replication::catalog::decode(b).is_some(),
            5 => basalt::replication::epoch::decode(b).is_some(),
            6 => basalt::wal::retention::decode_aborted(b).is_ok_and(|t| t == [3, 9]),
            7 => basalt::wal::retention::decode_upload_mark(b).is_some_and(|m| m.txn == 41),
            _ => false,
        };
        assert!(ok, "seed {name} does not decode");
    }
    let write = std::env::var_os("BASALT_WRITE_SEEDS").is_some();
    for (name, bytes) in payload_seeds() {
        let path = corpus("wal_payload").join(&name);
        if write {
            std::fs::write(&path, &bytes).unwrap();
        }
        let seed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let schema = if seed[0] & 1 == 0 {
            Schema::reference_cpu()
        } else {
            all_types()
        };
        codec::decode(&seed[1..], &schema).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let path = corpus("wal_scan").join("two_groups");
    if write {
        std::fs::write(&path, wal_seed()).unwrap();
    }
    let seed = std::fs::read(&path).unwrap();
    let (records, tail) = format::scan(&seed);
    assert_eq!(records.len(), 3);
    assert_eq!(tail, Tail::Clean);
}

/// The committed seeds of `sql_text` are statements basalt accepts (so the
/// fuzzer starts from inputs that reach past the first token).
#[test]
fn committed_sql_seeds_are_accepted() {
    use basalt::sql::{ddl, questdb};
    let dir = tempfile::tempdir().unwrap();
    basalt::table::TableWriter::create(dir.path(), "cpu", &Schema::reference_cpu()).unwrap();
    let mut n = 0;
    for e in std::fs::read_dir(corpus("sql_text")).unwrap() {
        let path = e.unwrap().path();
        let sql = std::fs::read_to_string(&path).unwrap();
        let accepted = ddl::session_command(&sql).is_some()
            || ddl::parse(&sql).is_ok_and(|d| d.is_some())
            || questdb::rewrite(&sql, dir.path()).is_ok_and(|r| r.is_some())
            || basalt::sqltext::names::fold_columns(&sql, &["Weather".to_string()], |_| {
                Some(vec!["City".into(), "Temperature".into()])
            })
            .is_some();
        assert!(accepted, "{}: {sql:?} is not accepted", path.display());
        n += 1;
    }
    assert!(n >= 8, "only {n} sql_text seeds");
}

/// Seeds of `qwp_decode`: the dictionary size byte, then a message as the
/// clients send it.
fn qwp_seeds() -> Vec<(String, Vec<u8>)> {
    use basalt::qwp::{finish_message, put_str, put_varint, start_message, types};
    use basalt::qwp::{FLAG_DEFER_COMMIT, FLAG_DELTA_SYMBOL_DICT, FLAG_GORILLA};
    let msg = |flags: u8, tables: u16, payload: &[u8]| {
        let mut out = Vec::new();
        start_message(&mut out, flags, tables);
        out.extend_from_slice(payload);
        finish_message(&mut out);
        out
    };
    // Symbols, longs, doubles, nanosecond designated timestamps; two new
    // dictionary entries on top of one the connection already has.
    let mut p = Vec::new();
    put_varint(&mut p, 1);
    put_varint(&mut p, 2);
    put_str(&mut p, "b");
    put_str(&mut p, "c");
    put_str(&mut p, "trades");
    put_varint(&mut p, 3);
    put_varint(&mut p, 4);
    for (n, t) in [
        ("sym", types::SYMBOL),
        ("qty", types::LONG),
        ("px", types::DOUBLE),
        ("", types::TIMESTAMP_NANOS),
    ] {
        put_str(&mut p, n);
        p.push(t);
    }
    p.push(0);
    p.extend_from_slice(&[0, 1, 2]);
    p.push(0);
    for v in [1i64, i64::MIN, 3] {
        p.extend_from_slice(&v.to_le_bytes());
    }
    p.push(0);
    for v in [1.5f64, f64::NAN, 3.0] {
        p.extend_from_slice(&v.to_le_bytes());
    }
    p.push(0);
    for v in 0..3i64 {
        p.extend_from_slice(&(1_700_000_000_000_000_000 + v).to_le_bytes());
    }
    let trades = [vec![1u8], msg(FLAG_DELTA_SYMBOL_DICT, 1, &p)].concat();
    // Nulls (bitmap) in VARCHAR, BOOLEAN, a Gorilla TIMESTAMP, a UUID.
    let mut p = Vec::new();
    put_varint(&mut p, 0);
    put_varint(&mut p, 0);
    put_str(&mut p, "v");
    put_varint(&mut p, 3);
    put_varint(&mut p, 4);
    for (n, t) in [
        ("s", types::VARCHAR),
        ("b", types::BOOLEAN),
        ("t", types::TIMESTAMP),
        ("u", types::UUID),
    ] {
        put_str(&mut p, n);
        p.push(t);
    }
    p.extend_from_slice(&[1, 0b010]);
    for o in [0u32, 2, 5] {
        p.extend_from_slice(&o.to_le_bytes());
    }
    p.extend_from_slice("hiabc".as_bytes());
    p.extend_from_slice(&[0, 0b101]);
    p.extend_from_slice(&[0, 1]); // no nulls, Gorilla
    p.extend_from_slice(&10i64.to_le_bytes());
    p.extend_from_slice(&20i64.to_le_bytes());
    p.push(0); // dod 0
    p.extend_from_slice(&[1, 0b011]);
    p.extend_from_slice(&[7u8; 16]);
    let nulls = [vec![0u8], msg(FLAG_DELTA_SYMBOL_DICT | FLAG_GORILLA, 1, &p)].concat();
    // A deferred message with no tables, and a commit frame.
    let deferred = [
        vec![0u8],
        msg(FLAG_DELTA_SYMBOL_DICT | FLAG_DEFER_COMMIT, 0, &[0, 0]),
    ]
    .concat();
    vec![
        ("trades".into(), trades),
        ("nulls_and_gorilla".into(), nulls),
        ("deferred_commit".into(), deferred),
    ]
}

/// The committed seeds of `qwp_decode` decode.
#[test]
fn committed_qwp_seeds_decode() {
    let write = std::env::var_os("BASALT_WRITE_SEEDS").is_some();
    std::fs::create_dir_all(corpus("qwp_decode")).unwrap();
    for (name, bytes) in qwp_seeds() {
        let path = corpus("qwp_decode").join(&name);
        if write {
            std::fs::write(&path, &bytes).unwrap();
        }
        let seed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        basalt::qwp::ingress::decode(&seed[1..], usize::from(seed[0]))
            .unwrap_or_else(|e| panic!("seed {name} does not decode: {e:?}"));
    }
}

/// The committed seeds of `auth_parse` reach past their parsers' first
/// checks: the users file and the verifier load, the header is a valid
/// login of the fuzz target's user, the signature line is base64.
#[test]
fn committed_auth_seeds_parse() {
    let seed = |name: &str| {
        let path = corpus("auth_parse").join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let users = seed("users_file");
    assert_eq!(users[0], 0);
    basalt::auth::Users::parse(std::str::from_utf8(&users[1..]).unwrap(), "seed").unwrap();
    let header = seed("basic_header");
    assert_eq!(header[0], 1);
    assert_eq!(
        basalt::auth::basic_user(&header[1..]).as_deref(),
        Some("fuzz")
    );
    let sig = seed("signature_line");
    assert_eq!(sig[0], 2);
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(&sig[1..])
        .unwrap();
    let verifier = seed("verifier");
    assert_eq!(verifier[0], 3);
    basalt::auth::ScramVerifier::parse(std::str::from_utf8(&verifier[1..]).unwrap()).unwrap();
}
