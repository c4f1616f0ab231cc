//! QuestDB's time-series clauses, rewritten into the SQL DataFusion runs:
//!
//! ```text
//! SELECT ts, host, avg(v) FROM t [WHERE ..] SAMPLE BY 1m [ALIGN TO CALENDAR] [ORDER BY ..] [LIMIT ..]
//!   → SELECT date_bin(INTERVAL '1 minutes', ts, TIMESTAMP '1970-01-01') AS ts, host, avg(v)
//!     FROM t [WHERE ..] GROUP BY date_bin(..), host ORDER BY ts [LIMIT ..]
//! SELECT * FROM t [WHERE ..] LATEST ON ts PARTITION BY host [ORDER BY ..] [LIMIT ..]
//!   → SELECT * FROM (SELECT DISTINCT ON (host) * FROM t [WHERE ..] ORDER BY host, ts DESC) AS t
//!     [ORDER BY ..] [LIMIT ..]
//! ```
//!
//! `SAMPLE BY` units: `U` µs, `T` ms, `s`, `m`, `h`, `d`; buckets are aligned
//! to the calendar (UTC midnight), QuestDB's default. The sampled timestamp
//! is the table's designated timestamp. `FILL` and `ALIGN TO FIRST
//! OBSERVATION` are refused with a message. Rows of `LATEST ON` come in
//! partition-key order unless the query orders them.

use std::path::Path;

use sqlparser::ast::{
    visit_expressions, Expr, GroupByExpr, SelectItem, SetExpr, Statement, TableFactor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use super::{offset_of, SqlError};

/// Aggregate functions (a projection item using one is not grouped by).
const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "avg",
    "mean",
    "min",
    "max",
    "first_value",
    "last_value",
    "median",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "var",
    "variance",
    "var_pop",
    "var_samp",
    "approx_distinct",
    "approx_median",
    "approx_percentile_cont",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "bit_and",
    "bit_or",
    "corr",
    "covar",
    "covar_pop",
    "covar_samp",
];

enum Clause {
    SampleBy { every: String },
    LatestOn { ts: String, keys: Vec<String> },
}

fn word(t: &Token, kw: &str) -> bool {
    matches!(t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(kw))
}

/// The query with its `SAMPLE BY` or `LATEST ON` clause rewritten, or `None`
/// when it has neither.
pub fn rewrite(sql: &str, data_dir: &Path) -> Result<Option<String>, SqlError> {
    let lower = sql.to_ascii_lowercase();
    if !lower.contains("sample") && !lower.contains("latest") {
        return Ok(None);
    }
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize_with_location() else {
        return Ok(None); // DataFusion reports the error
    };
    let Some((clause, range, at)) = find_clause(sql, &tokens)? else {
        return Ok(None);
    };
    let rest: String = tokens[..range.start]
        .iter()
        .chain(&tokens[range.end..])
        .map(|t| t.token.to_string())
        .collect();
    let stmt = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&rest)
        .and_then(|mut p| p.parse_statement())
        .map_err(|e| SqlError::new(e.to_string(), 0))?;
    let unsupported = |what: &str| {
        SqlError::new(
            format!("{what} cannot be combined with SAMPLE BY or LATEST ON"),
            at,
        )
    };
    let Statement::Query(query) = stmt else {
        return Err(unsupported("a statement other than SELECT"));
    };
    let SetExpr::Select(select) = query.body.as_ref() else {
        return Err(unsupported("UNION, VALUES or a parenthesised query"));
    };
    let [from] = select.from.as_slice() else {
        return Err(unsupported("a query over several tables"));
    };
    if !from.joins.is_empty() {
        return Err(unsupported("JOIN"));
    }
    let TableFactor::Table { name, alias, .. } = &from.relation else {
        return Err(unsupported("a subquery in FROM"));
    };
    let table = name.to_string();
    let qualifier = alias
        .as_ref()
        .map_or_else(|| table.clone(), |a| a.name.to_string());
    let where_ = select
        .selection
        .as_ref()
        .map(|w| format!(" WHERE {w}"))
        .unwrap_or_default();
    let order = query
        .order_by
        .as_ref()
        .map(|o| format!(" {}", o.to_string().trim_start()))
        .unwrap_or_default();
    let limit = query
        .limit_clause
        .as_ref()
        .map(|l| format!(" {}", l.to_string().trim_start()))
        .unwrap_or_default();
    let items: Vec<String> = select.projection.iter().map(|i| i.to_string()).collect();
    match clause {
        Clause::LatestOn { ts, keys } => {
            if select.distinct.is_some()
                || !matches!(&select.group_by, GroupByExpr::Expressions(g, _) if g.is_empty())
            {
                return Err(unsupported("DISTINCT or GROUP BY"));
            }
            let keys = keys.join(", ");
            Ok(Some(format!(
                "SELECT * FROM (SELECT DISTINCT ON ({keys}) {} FROM {from}{where_} ORDER BY {keys}, {ts} DESC) AS {qualifier}{order}{limit}",
                items.join(", ")
            )))
        }
        Clause::SampleBy { every } => {
            if select.distinct.is_some()
                || !matches!(&select.group_by, GroupByExpr::Expressions(g, _) if g.is_empty())
            {
                return Err(unsupported("DISTINCT or GROUP BY"));
            }
            let ts = designated_timestamp(data_dir, &table).ok_or_else(|| {
                SqlError::new(
                    format!("SAMPLE BY needs a table with a designated timestamp; {table} has none (or does not exist)"),
                    at,
                )
            })?;
            let bucket = format!(
                "date_bin(INTERVAL '{every}', {qualifier}.\"{ts}\", TIMESTAMP '1970-01-01 00:00:00')"
            );
            let mut out_items = Vec::new();
            let mut groups = vec![bucket.clone()];
            let mut ts_alias = None;
            for item in &select.projection {
                let expr = match item {
                    SelectItem::UnnamedExpr(e) => e,
                    SelectItem::ExprWithAlias { expr, .. } => expr,
                    _ => {
                        return Err(SqlError::new(
                            "SAMPLE BY needs the columns listed (no *)",
                            at,
                        ))
                    }
                };
                if is_column(expr, &ts) {
                    let alias = match item {
                        SelectItem::ExprWithAlias { alias, .. } => alias.to_string(),
                        _ => format!("\"{ts}\""),
                    };
                    out_items.push(format!("{bucket} AS {alias}"));
                    ts_alias = Some(alias);
                } else {
                    if !is_aggregate(expr) {
                        groups.push(expr.to_string());
                    }
                    out_items.push(item.to_string());
                }
            }
            let order = if order.is_empty() {
                format!(" ORDER BY {}", ts_alias.unwrap_or(bucket))
            } else {
                order
            };
            let having = select
                .having
                .as_ref()
                .map(|h| format!(" HAVING {h}"))
                .unwrap_or_default();
            Ok(Some(format!(
                "SELECT {} FROM {from}{where_} GROUP BY {}{having}{order}{limit}",
                out_items.join(", "),
                groups.join(", ")
            )))
        }
    }
}

fn is_column(e: &Expr, name: &str) -> bool {
    match e {
        Expr::Identifier(i) => i.value.eq_ignore_ascii_case(name),
        Expr::CompoundIdentifier(parts) => parts
            .last()
            .is_some_and(|i| i.value.eq_ignore_ascii_case(name)),
        _ => false,
    }
}

fn is_aggregate(e: &Expr) -> bool {
    let mut found = false;
    let _ = visit_expressions(e, |x| {
        if let Expr::Function(f) = x {
            let name = f.name.to_string().to_ascii_lowercase();
            if f.over.is_none() && AGGREGATES.contains(&name.as_str()) {
                found = true;
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    found
}

fn designated_timestamp(data_dir: &Path, table: &str) -> Option<String> {
    let stored = crate::table::resolve_name(data_dir, table.trim_matches('"'))?;
    let r = crate::table::TableReader::open(data_dir, &stored).ok()?;
    let s = r.schema();
    s.timestamp.map(|i| s.columns[i].name.clone())
}

/// The first `SAMPLE BY` or `LATEST ON` clause outside parentheses: what it
/// says, the tokens it spans, and its character offset.
fn find_clause(
    sql: &str,
    tokens: &[TokenWithSpan],
) -> Result<Option<(Clause, std::ops::Range<usize>, usize)>, SqlError> {
    // Indexes of the tokens that are not white space.
    let idx: Vec<usize> = (0..tokens.len())
        .filter(|&i| !matches!(tokens[i].token, Token::Whitespace(_)))
        .collect();
    let tok = |k: usize| idx.get(k).map(|&i| &tokens[i].token);
    let pos = |k: usize| {
        idx.get(k).map_or(sql.chars().count(), |&i| {
            offset_of(
                sql,
                tokens[i].span.start.line as usize,
                tokens[i].span.start.column as usize,
            )
        })
    };
    let mut depth = 0i32;
    for k in 0..idx.len() {
        let t = tok(k).expect("in range");
        match t {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ => {}
        }
        if depth != 0 {
            continue;
        }
        if word(t, "SAMPLE") && tok(k + 1).is_some_and(|t| word(t, "BY")) {
            let at = pos(k);
            // `1m` is a number and a word; `m` alone means 1.
            let (n, unit, mut end) = match (tok(k + 2), tok(k + 3)) {
                (Some(Token::Number(n, _)), Some(Token::Word(w)))
                    if idx[k + 3] == idx[k + 2] + 1 =>
                {
                    (n.clone(), w.value.clone(), k + 4)
                }
                (Some(Token::Word(w)), _) => ("1".to_string(), w.value.clone(), k + 3),
                _ => {
                    return Err(SqlError::new(
                        "SAMPLE BY needs an interval such as 1m, 15s or 1h",
                        pos(k + 2),
                    ))
                }
            };
            let unit_name = match unit.as_str() {
                "U" => "microseconds",
                "T" => "milliseconds",
                "s" => "seconds",
                "m" => "minutes",
                "h" => "hours",
                "d" => "days",
                "M" | "y" => return Err(SqlError::new(
                    "SAMPLE BY months or years is not supported (buckets must have a fixed length)",
                    pos(k + 2),
                )),
                _ => {
                    return Err(SqlError::new(
                        format!("unknown SAMPLE BY unit {unit:?}: use U, T, s, m, h or d"),
                        pos(k + 2),
                    ))
                }
            };
            if n.parse::<u64>().map_or(true, |n| n == 0) {
                return Err(SqlError::new(
                    format!("SAMPLE BY interval {n}{unit} is not a positive whole number"),
                    pos(k + 2),
                ));
            }
            if tok(end).is_some_and(|t| word(t, "FILL")) {
                return Err(SqlError::new(
                    "SAMPLE BY ... FILL is not supported",
                    pos(end),
                ));
            }
            if tok(end).is_some_and(|t| word(t, "ALIGN")) {
                if tok(end + 1).is_some_and(|t| word(t, "TO"))
                    && tok(end + 2).is_some_and(|t| word(t, "CALENDAR"))
                {
                    end += 3;
                } else {
                    return Err(SqlError::new(
                        "only ALIGN TO CALENDAR is supported",
                        pos(end),
                    ));
                }
            }
            let every = format!("{n} {unit_name}");
            let span = idx[k]..idx.get(end).copied().unwrap_or(tokens.len());
            return Ok(Some((Clause::SampleBy { every }, span, at)));
        }
        // `LATEST ON ts PARTITION BY`: anything else (`JOIN latest ON ..`)
        // is not the clause.
        if word(t, "LATEST")
            && tok(k + 1).is_some_and(|t| word(t, "ON"))
            && matches!(tok(k + 2), Some(Token::Word(_)))
            && tok(k + 3).is_some_and(|t| word(t, "PARTITION"))
            && tok(k + 4).is_some_and(|t| word(t, "BY"))
        {
            let at = pos(k);
            let Some(Token::Word(w)) = tok(k + 2) else {
                unreachable!("matched above")
            };
            let ts = w.to_string();
            let mut keys = Vec::new();
            let mut j = k + 5;
            loop {
                match tok(j) {
                    Some(Token::Word(w))
                        if !["ORDER", "LIMIT"].contains(&w.value.to_ascii_uppercase().as_str())
                            || w.quote_style.is_some() =>
                    {
                        keys.push(w.to_string());
                        j += 1;
                    }
                    _ => {
                        return Err(SqlError::new(
                            "LATEST ON ... PARTITION BY needs column names",
                            pos(j),
                        ))
                    }
                }
                if tok(j) == Some(&Token::Comma) {
                    j += 1;
                } else {
                    break;
                }
            }
            let span = idx[k]..idx.get(j).copied().unwrap_or(tokens.len());
            return Ok(Some((Clause::LatestOn { ts, keys }, span, at)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_on_becomes_distinct_on() {
        let dir = tempfile::tempdir().unwrap();
        let q = rewrite(
            "select host, v, ts from cpu where v > 1 latest on ts partition by host, region limit 5",
            dir.path(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            q,
            "SELECT * FROM (SELECT DISTINCT ON (host, region) host, v, ts FROM cpu WHERE v > 1 ORDER BY host, region, ts DESC) AS cpu LIMIT 5"
        );
        assert!(rewrite("select 'latest on' from cpu", dir.path())
            .unwrap()
            .is_none());
        assert!(rewrite(
            "select * from a join latest on a.id = latest.id",
            dir.path()
        )
        .unwrap()
        .is_none());
    }

    #[test]
    fn sample_by_becomes_date_bin() {
        let dir = tempfile::tempdir().unwrap();
        let schema = crate::table::Schema::new(
            vec![
                ("ts", crate::table::ColumnType::Timestamp),
                ("v", crate::table::ColumnType::Double),
                ("host", crate::table::ColumnType::Symbol),
            ],
            Some("ts"),
            crate::table::PartitionBy::Day,
        )
        .unwrap();
        crate::table::TableWriter::create(dir.path(), "cpu", &schema).unwrap();
        let q = rewrite("SELECT ts, host, avg(v), count(*) FROM cpu WHERE v > 0 SAMPLE BY 15m ALIGN TO CALENDAR", dir.path())
            .unwrap()
            .unwrap();
        let bucket = "date_bin(INTERVAL '15 minutes', cpu.\"ts\", TIMESTAMP '1970-01-01 00:00:00')";
        assert_eq!(
            q,
            format!("SELECT {bucket} AS \"ts\", host, avg(v), count(*) FROM cpu WHERE v > 0 GROUP BY {bucket}, host ORDER BY \"ts\"")
        );
        let e = rewrite("SELECT ts, avg(v) FROM cpu SAMPLE BY 1M", dir.path()).unwrap_err();
        assert!(e.message.contains("months"), "{e:?}");
        assert_eq!(e.position, 37);
        let e = rewrite(
            "SELECT ts, avg(v) FROM cpu SAMPLE BY 1h FILL(NULL)",
            dir.path(),
        )
        .unwrap_err();
        assert!(e.message.contains("FILL"), "{e:?}");
        let e = rewrite("SELECT * FROM cpu SAMPLE BY 1h", dir.path()).unwrap_err();
        assert!(e.message.contains("no *"), "{e:?}");
    }
}
