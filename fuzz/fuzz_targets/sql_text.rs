//! Any text given to the SQL basalt reads itself before DataFusion:
//! `session_command`, the DDL and admin statements (`ddl::parse`), the
//! QuestDB clause rewrites (`questdb::rewrite`, SAMPLE BY / LATEST ON) and
//! the case folding of column names (`names::fold_columns`). Each answers or
//! refuses with a position inside the text, never panics; a rewrite's
//! output is SQL the parser reads back, and folding never turns a statement
//! the parser reads into one it does not.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use basalt::disk::{Mounted, SimDisk};
use basalt::sqltext::{ddl, names, questdb};
use basalt::table::{Schema, TableWriter};
use libfuzzer_sys::fuzz_target;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::{Parser, ParserError};

/// A data directory holding the reference table `cpu`, on a simulated disk
/// (the rewrite reads the designated timestamp from its `_meta`).
fn data_dir() -> &'static PathBuf {
    static DIR: OnceLock<(Mounted, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let disk = SimDisk::mount();
        let dir = disk.root().join("data");
        basalt::disk::create_dir_all(&dir).expect("mkdir");
        TableWriter::create(&dir, "cpu", &Schema::reference_cpu()).expect("create cpu");
        (disk, dir)
    })
    .1
}

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let chars = sql.chars().count();
    let _ = ddl::session_command(sql);
    if let Err(e) = ddl::parse(sql) {
        assert!(e.position <= chars, "ddl error past the text: {e:?}");
    }
    let tables = ["Weather".to_string(), "cpu".to_string()];
    if let Some(f) = names::fold_columns(sql, &tables, |t| {
        Some(match t {
            "Weather" => vec!["City".into(), "Temperature".into(), "Timestamp".into()],
            _ => vec!["host".into(), "Usage".into()],
        })
    }) {
        let parses = |s: &str| Parser::parse_sql(&PostgreSqlDialect {}, s).is_ok();
        assert!(
            !parses(sql) || parses(&f.sql),
            "folding {sql:?} gave SQL the parser refuses: {:?}",
            f.sql
        );
        assert!(f.original(f.sql.chars().count()) <= chars);
    }
    match questdb::rewrite(sql, data_dir()) {
        Ok(Some(out)) => {
            if let Err(e) = Parser::parse_sql(&PostgreSqlDialect {}, &out) {
                // A rewrite nests the query one level deeper.
                assert!(
                    matches!(e, ParserError::RecursionLimitExceeded),
                    "rewrite of {sql:?} gave SQL the parser refuses: {out:?}: {e}"
                );
            }
        }
        Ok(None) => {}
        Err(e) => assert!(e.position <= chars, "rewrite error past the text: {e:?}"),
    }
});
