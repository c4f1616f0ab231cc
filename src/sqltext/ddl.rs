//! basalt's own statements: QuestDB's `CREATE TABLE` and `DROP TABLE`, and
//! the session commands PostgreSQL clients send (`BEGIN`, `SET`...).
//!
//! ```text
//! CREATE TABLE [IF NOT EXISTS] name (column type [, ...])
//!     [TIMESTAMP(column)] [PARTITION BY NONE|HOUR|DAY|WEEK|MONTH|YEAR] [WAL] [;]
//! DROP TABLE [IF EXISTS] name [;]
//! ```
//!
//! Types: BOOLEAN, BYTE, SHORT, INT, LONG, FLOAT, DOUBLE, TIMESTAMP, SYMBOL,
//! VARCHAR, and their PostgreSQL names (SMALLINT, INTEGER, BIGINT, REAL,
//! DOUBLE PRECISION, TEXT...). A table with `TIMESTAMP(column)` is
//! partitioned by DAY unless told otherwise and is replicated; one without
//! is local only (`PARTITION BY NONE`).

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use super::{offset_of, SqlError};
use crate::table::{ColumnType, PartitionBy, Schema};

/// A parsed basalt statement.
#[derive(Debug, PartialEq)]
pub enum Ddl {
    CreateTable {
        name: String,
        schema: Schema,
        if_not_exists: bool,
    },
    DropTable {
        name: String,
        if_exists: bool,
    },
    /// `SWITCH ROLE TO PRIMARY|REPLICA [TIMEOUT ms]` (QuestDB Enterprise's).
    SwitchRole {
        to: crate::replication::Role,
        /// Bounds each stage of the switch.
        timeout_ms: u64,
    },
    /// `SWITCH STATUS`.
    SwitchStatus,
    /// `BACKUP DATABASE` (QuestDB's): a snapshot into the object store.
    BackupDatabase,
}

/// The tag of a session command that basalt accepts and ignores: each
/// statement is its own read-only snapshot, so transactions and session
/// settings change nothing.
pub fn session_command(sql: &str) -> Option<&'static str> {
    let first = sql
        .trim_start()
        .split(|c: char| c.is_whitespace() || c == ';')
        .next()?
        .to_ascii_uppercase();
    Some(match first.as_str() {
        "BEGIN" | "START" => "BEGIN",
        "COMMIT" | "END" => "COMMIT",
        "ROLLBACK" | "ABORT" => "ROLLBACK",
        "SET" => "SET",
        "DISCARD" => "DISCARD",
        _ => return None,
    })
}

struct Tokens<'a> {
    sql: &'a str,
    tokens: Vec<TokenWithSpan>,
    at: usize,
}

impl Tokens<'_> {
    fn position(&self) -> usize {
        match self.tokens.get(self.at) {
            Some(t) => offset_of(
                self.sql,
                t.span.start.line as usize,
                t.span.start.column as usize,
            ),
            None => self.sql.chars().count(),
        }
    }

    fn error(&self, what: impl Into<String>) -> SqlError {
        SqlError::new(what, self.position())
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|t| &t.token)
    }

    /// Whether the next token is the keyword `kw` (consumed if so).
    fn keyword(&mut self, kw: &str) -> bool {
        match self.peek() {
            Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(kw) => {
                self.at += 1;
                true
            }
            _ => false,
        }
    }

    fn expect_keyword(&mut self, kw: &str) -> Result<(), SqlError> {
        if self.keyword(kw) {
            Ok(())
        } else {
            Err(self.error(format!("expected {kw}")))
        }
    }

    fn expect(&mut self, t: Token, what: &str) -> Result<(), SqlError> {
        if self.peek() == Some(&t) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error(format!("expected {what}")))
        }
    }

    /// A name: a word, quoted or not, kept as written.
    fn name(&mut self, what: &str) -> Result<String, SqlError> {
        match self.peek() {
            Some(Token::Word(w)) => {
                let v = w.value.clone();
                self.at += 1;
                Ok(v)
            }
            _ => Err(self.error(format!("expected {what}"))),
        }
    }

    fn end(&mut self) -> Result<(), SqlError> {
        while self.peek() == Some(&Token::SemiColon) {
            self.at += 1;
        }
        match self.peek() {
            None => Ok(()),
            Some(t) => Err(self.error(format!("unexpected {t} at the end of the statement"))),
        }
    }
}

/// `Some` when `sql` is a basalt statement (`CREATE`, `DROP`, `SWITCH`, `BACKUP`), parsed or
/// with a positioned error; `None` for anything else.
pub fn parse(sql: &str) -> Result<Option<Ddl>, SqlError> {
    let first = sql.split_whitespace().next().unwrap_or("");
    if !["create", "drop", "switch", "backup"]
        .iter()
        .any(|k| first.eq_ignore_ascii_case(k))
    {
        return Ok(None);
    }
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| {
            SqlError::new(
                e.message.clone(),
                offset_of(sql, e.location.line as usize, e.location.column as usize),
            )
        })?
        .into_iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .collect();
    let mut t = Tokens { sql, tokens, at: 0 };
    if t.keyword("SWITCH") {
        return switch(&mut t).map(Some);
    }
    if t.keyword("BACKUP") {
        if !t.keyword("DATABASE") {
            return Err(t.error(
                "only BACKUP DATABASE is supported (a snapshot holds every replicated table)",
            ));
        }
        t.end()?;
        return Ok(Some(Ddl::BackupDatabase));
    }
    if t.keyword("CREATE") {
        create_table(&mut t).map(Some)
    } else {
        t.expect_keyword("DROP")?;
        if !t.keyword("TABLE") {
            return Err(t.error("only DROP TABLE is supported"));
        }
        let if_exists = t.keyword("IF");
        if if_exists {
            t.expect_keyword("EXISTS")?;
        }
        let name = t.name("a table name")?;
        t.end()?;
        Ok(Some(Ddl::DropTable { name, if_exists }))
    }
}

/// `SWITCH ROLE TO PRIMARY|REPLICA [TIMEOUT ms]` or `SWITCH STATUS`.
fn switch(t: &mut Tokens<'_>) -> Result<Ddl, SqlError> {
    use crate::replication::node::{SWITCH_TIMEOUT_DEFAULT_MS, SWITCH_TIMEOUT_MAX_MS};
    use crate::replication::Role;
    if t.keyword("STATUS") {
        t.end()?;
        return Ok(Ddl::SwitchStatus);
    }
    if !t.keyword("ROLE") {
        return Err(t.error("expected ROLE or STATUS after SWITCH"));
    }
    t.expect_keyword("TO")?;
    let to = if t.keyword("PRIMARY") {
        Role::Primary
    } else if t.keyword("REPLICA") {
        Role::Replica
    } else {
        return Err(t.error("expected PRIMARY or REPLICA"));
    };
    let mut timeout_ms = SWITCH_TIMEOUT_DEFAULT_MS;
    if t.keyword("TIMEOUT") {
        let at = t.position();
        let n = match t.peek() {
            Some(Token::Number(n, _)) => n.parse::<u64>().ok(),
            _ => None,
        };
        match n {
            Some(n) if (1..=SWITCH_TIMEOUT_MAX_MS).contains(&n) => {
                timeout_ms = n;
                t.at += 1;
            }
            _ => {
                return Err(SqlError::new(
                    format!("TIMEOUT takes milliseconds from 1 to {SWITCH_TIMEOUT_MAX_MS}"),
                    at,
                ))
            }
        }
    }
    t.end()?;
    Ok(Ddl::SwitchRole { to, timeout_ms })
}

fn create_table(t: &mut Tokens<'_>) -> Result<Ddl, SqlError> {
    if !t.keyword("TABLE") {
        return Err(t.error("only CREATE TABLE is supported"));
    }
    let if_not_exists = t.keyword("IF");
    if if_not_exists {
        t.expect_keyword("NOT")?;
        t.expect_keyword("EXISTS")?;
    }
    let name_at = t.position();
    let name = t.name("a table name")?;
    t.expect(Token::LParen, "( and a column list")?;
    let mut columns: Vec<(String, ColumnType, usize)> = Vec::new();
    loop {
        let at = t.position();
        let column = t.name("a column name")?;
        let ty = column_type(t)?;
        if columns
            .iter()
            .any(|(c, _, _)| c.eq_ignore_ascii_case(&column))
        {
            return Err(SqlError::new(
                format!("duplicate column name {column:?}"),
                at,
            ));
        }
        columns.push((column, ty, at));
        if t.peek() == Some(&Token::Comma) {
            t.at += 1;
            continue;
        }
        t.expect(Token::RParen, ", or )")?;
        break;
    }
    let mut timestamp = None;
    if t.keyword("TIMESTAMP") {
        t.expect(Token::LParen, "( after TIMESTAMP")?;
        let at = t.position();
        let ts = t.name("the designated timestamp column")?;
        t.expect(Token::RParen, ")")?;
        match columns.iter().find(|(c, _, _)| c.eq_ignore_ascii_case(&ts)) {
            Some((c, ColumnType::Timestamp, _)) => timestamp = Some(c.clone()),
            Some(_) => {
                return Err(SqlError::new(
                    format!("designated timestamp column {ts:?} must be of type TIMESTAMP"),
                    at,
                ))
            }
            None => return Err(SqlError::new(format!("no column named {ts:?}"), at)),
        }
    }
    let mut partition_by = None;
    if t.keyword("PARTITION") {
        t.expect_keyword("BY")?;
        let at = t.position();
        let unit = t.name("NONE, HOUR, DAY, WEEK, MONTH or YEAR")?;
        partition_by = Some(
            match unit.to_ascii_uppercase().as_str() {
                "NONE" => PartitionBy::None,
                "HOUR" => PartitionBy::Hour,
                "DAY" => PartitionBy::Day,
                "WEEK" => PartitionBy::Week,
                "MONTH" => PartitionBy::Month,
                "YEAR" => PartitionBy::Year,
                _ => {
                    return Err(SqlError::new(
                        format!("unknown partition scheme {unit:?}: expected NONE, HOUR, DAY, WEEK, MONTH or YEAR"),
                        at,
                    ))
                }
            },
        );
    }
    if t.keyword("BYPASS") {
        return Err(
            t.error("BYPASS WAL is not supported: every basalt table is written through its WAL")
        );
    }
    t.keyword("WAL");
    t.end()?;
    let partition_by = match (&timestamp, partition_by) {
        (Some(_), None) => PartitionBy::Day,
        (Some(_), Some(PartitionBy::None)) => return Err(SqlError::new(
            "a table with a designated timestamp needs PARTITION BY HOUR, DAY, WEEK, MONTH or YEAR",
            name_at,
        )),
        (None, None | Some(PartitionBy::None)) => PartitionBy::None,
        (None, Some(_)) => {
            return Err(SqlError::new(
                "PARTITION BY needs a designated timestamp: add TIMESTAMP(column)",
                name_at,
            ))
        }
        (Some(_), Some(p)) => p,
    };
    let schema = Schema::new(
        columns.iter().map(|(c, ty, _)| (c.as_str(), *ty)).collect(),
        timestamp.as_deref(),
        partition_by,
    )
    .map_err(|e| SqlError::new(e.to_string(), name_at))?;
    crate::table::schema::validate_name("table", &name)
        .map_err(|e| SqlError::new(e.to_string(), name_at))?;
    Ok(Ddl::CreateTable {
        name,
        schema,
        if_not_exists,
    })
}

fn column_type(t: &mut Tokens<'_>) -> Result<ColumnType, SqlError> {
    let at = t.position();
    let word = t.name("a column type")?.to_ascii_uppercase();
    let ty = match word.as_str() {
        "BOOLEAN" | "BOOL" => ColumnType::Boolean,
        "BYTE" | "TINYINT" => ColumnType::Byte,
        "SHORT" | "SMALLINT" | "INT2" => ColumnType::Short,
        "INT" | "INTEGER" | "INT4" => ColumnType::Int,
        "LONG" | "BIGINT" | "INT8" => ColumnType::Long,
        "FLOAT" | "REAL" | "FLOAT4" => ColumnType::Float,
        "DOUBLE" => {
            t.keyword("PRECISION");
            ColumnType::Double
        }
        "FLOAT8" => ColumnType::Double,
        "TIMESTAMP" => ColumnType::Timestamp,
        "SYMBOL" => ColumnType::Symbol,
        "VARCHAR" | "STRING" | "TEXT" => ColumnType::Varchar,
        _ => {
            return Err(SqlError::new(
                format!("unsupported column type {word}: expected BOOLEAN, BYTE, SHORT, INT, LONG, FLOAT, DOUBLE, TIMESTAMP, SYMBOL or VARCHAR"),
                at,
            ))
        }
    };
    // VARCHAR(n) and the like: the length is accepted and not enforced.
    if t.peek() == Some(&Token::LParen) {
        t.at += 1;
        while !matches!(t.peek(), Some(Token::RParen) | None) {
            t.at += 1;
        }
        t.expect(Token::RParen, ")")?;
    }
    Ok(ty)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(sql: &str) -> Schema {
        match parse(sql).expect("parses").expect("a basalt statement") {
            Ddl::CreateTable { schema, .. } => schema,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn questdb_create_table() {
        let s = create(
            "CREATE TABLE trades (ts TIMESTAMP, sym SYMBOL, price DOUBLE, qty LONG, \
             ok BOOLEAN, b BYTE, s SHORT, i INT, f FLOAT, note VARCHAR) \
             TIMESTAMP(ts) PARTITION BY HOUR WAL;",
        );
        assert_eq!(s.timestamp, Some(0));
        assert_eq!(s.partition_by, PartitionBy::Hour);
        assert_eq!(s.columns.len(), 10);
        assert_eq!(s.columns[1].ty, ColumnType::Symbol);
        assert_eq!(s.columns[9].ty, ColumnType::Varchar);
        let local = create("create table if not exists t (x double precision, y varchar(20))");
        assert_eq!(local.timestamp, None);
        assert_eq!(local.partition_by, PartitionBy::None);
        assert_eq!(local.columns[0].ty, ColumnType::Double);
    }

    #[test]
    fn errors_point_at_the_problem() {
        let e = parse("CREATE TABLE t (ts TIMESTAMP, x DECIMAL) TIMESTAMP(ts)").unwrap_err();
        assert!(
            e.message.contains("unsupported column type DECIMAL"),
            "{e:?}"
        );
        assert_eq!(e.position, 32);
        let e = parse("CREATE TABLE t (ts TIMESTAMP, x INT) TIMESTAMP(x)").unwrap_err();
        assert!(e.message.contains("must be of type TIMESTAMP"), "{e:?}");
        assert_eq!(e.position, 47);
        let e = parse("CREATE TABLE t (x INT) PARTITION BY DAY").unwrap_err();
        assert!(e.message.contains("needs a designated timestamp"), "{e:?}");
        let e = parse("CREATE TABLE t (ts TIMESTAMP) TIMESTAMP(ts) PARTITION BY FORTNIGHT")
            .unwrap_err();
        assert!(e.message.contains("unknown partition scheme"), "{e:?}");
        let e = parse("CREATE TABLE t (ts TIMESTAMP) junk").unwrap_err();
        assert!(e.message.contains("unexpected"), "{e:?}");
        assert_eq!(e.position, 30);
        assert!(parse("CREATE VIEW v AS SELECT 1").is_err());
        assert!(parse("SELECT 1").unwrap().is_none());
    }

    #[test]
    fn drop_table() {
        assert_eq!(
            parse("drop table if exists \"Cpu\";").unwrap(),
            Some(Ddl::DropTable {
                name: "Cpu".into(),
                if_exists: true
            })
        );
        assert_eq!(session_command("BEGIN"), Some("BEGIN"));
        assert_eq!(session_command("  set extra_float_digits = 3"), Some("SET"));
        assert_eq!(session_command("select 1"), None);
    }
}
