//! QuestDB's names are case-insensitive; basalt keeps the case a client
//! created a table or column with (ILP's `Temperature` stays `Temperature`
//! in results). SQL folds unquoted names to lower case, so without help
//! `select temperature from weather` would not find `Temperature`. Here an
//! unquoted word that names a column of a table the statement mentions,
//! ignoring case, is replaced by that column's stored name, quoted. Table
//! names are resolved the same way by the table provider.
//!
//! Only words that differ from their stored column by case alone are
//! touched, and only when that column is the one column of the mentioned
//! tables with that name ignoring case. Words followed by `(` (functions)
//! and words right after `AS` (aliases) are left alone.

use std::collections::HashMap;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer, Whitespace};

/// The statement with column names spelled as stored, and the character
/// offsets (in the new text) where a quote pair was added: positions of
/// errors in the new text map back to the user's text with [`Folded::original`].
#[derive(Debug, PartialEq, Eq)]
pub struct Folded {
    pub sql: String,
    quoted_at: Vec<usize>,
}

impl Folded {
    /// The character offset in the user's text of `pos` in the new text.
    pub fn original(&self, pos: usize) -> usize {
        // Each quoted word before `pos` added two characters.
        let before = self.quoted_at.iter().filter(|q| **q < pos).count();
        let inside = self.quoted_at.iter().any(|q| pos > *q && pos <= q + 1);
        pos.saturating_sub(2 * before)
            .saturating_sub(inside as usize)
    }
}

/// Folds unquoted column names of `sql` to their stored spelling.
/// `tables` lists the stored table names; `columns_of` gives a table's
/// stored column names. `None` when nothing changes (or the text does not
/// tokenize: the planner reports that).
pub fn fold_columns(
    sql: &str,
    tables: &[String],
    columns_of: impl Fn(&str) -> Option<Vec<String>>,
) -> Option<Folded> {
    // Cheap way out: no stored name with upper case letters.
    if tables.is_empty() {
        return None;
    }
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
    let by_lower: HashMap<String, &String> = tables.iter().map(|t| (t.to_lowercase(), t)).collect();
    // Columns of the tables the statement mentions, by lower-case name;
    // `None` marks a name two columns share ignoring case.
    let mut columns: HashMap<String, Option<String>> = HashMap::new();
    let mut seen_tables = Vec::new();
    for t in &tokens {
        let Token::Word(w) = t else { continue };
        let Some(table) = by_lower.get(&w.value.to_lowercase()) else {
            continue;
        };
        if seen_tables.contains(table) {
            continue;
        }
        seen_tables.push(*table);
        for c in columns_of(table).unwrap_or_default() {
            columns
                .entry(c.to_lowercase())
                .and_modify(|v| {
                    if v.as_deref() != Some(c.as_str()) {
                        *v = None;
                    }
                })
                .or_insert(Some(c));
        }
    }
    columns.retain(|lower, stored| stored.as_deref().is_some_and(|s| s != lower));
    if columns.is_empty() {
        return None;
    }
    let significant = |i: usize| {
        tokens
            .get(i)
            .filter(|t| !matches!(t, Token::Whitespace(_)))
            .is_some()
    };
    let next_of = |i: usize| (i + 1..tokens.len()).find(|k| significant(*k));
    let prev_of = |i: usize| (0..i).rev().find(|k| significant(*k));
    let mut out = String::with_capacity(sql.len() + 16);
    let mut quoted_at = Vec::new();
    let mut chars = 0;
    for (i, t) in tokens.iter().enumerate() {
        let replacement = match t {
            Token::Word(w) if w.quote_style.is_none() => {
                let call = next_of(i).is_some_and(|k| tokens[k] == Token::LParen);
                let alias = prev_of(i).is_some_and(
                    |k| matches!(&tokens[k], Token::Word(p) if p.quote_style.is_none() && p.value.eq_ignore_ascii_case("as")),
                );
                columns
                    .get(&w.value.to_lowercase())
                    .and_then(|s| s.as_ref())
                    .filter(|_| !call && !alias)
            }
            _ => None,
        };
        let text = match replacement {
            Some(stored) => {
                quoted_at.push(chars);
                format!("\"{}\"", stored.replace('"', "\"\""))
            }
            None => match t {
                // Kept as written (a single-line comment keeps its newline).
                Token::Whitespace(Whitespace::SingleLineComment { comment, prefix }) => {
                    format!("{prefix}{comment}")
                }
                t => t.to_string(),
            },
        };
        chars += text.chars().count();
        out.push_str(&text);
    }
    if quoted_at.is_empty() {
        return None;
    }
    Some(Folded {
        sql: out,
        quoted_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold(sql: &str) -> Option<String> {
        let tables = vec!["Weather".to_string(), "cpu".to_string()];
        fold_columns(sql, &tables, |t| match t {
            "Weather" => Some(vec!["City".into(), "Temperature".into(), "ts".into()]),
            "cpu" => Some(vec!["host".into(), "Temp".into(), "temp_x".into()]),
            _ => None,
        })
        .map(|f| f.sql)
    }

    #[test]
    fn unquoted_columns_find_their_stored_case() {
        assert_eq!(
            fold("select temperature, CITY from weather where city = 'x'").as_deref(),
            Some(r#"select "Temperature", "City" from weather where "City" = 'x'"#)
        );
        assert_eq!(
            fold("SELECT w.temperature FROM Weather w").as_deref(),
            Some(r#"SELECT w."Temperature" FROM Weather w"#)
        );
    }

    #[test]
    fn what_is_left_alone() {
        // Already stored in lower case, quoted, other tables' columns.
        assert_eq!(fold("select ts from weather"), None);
        assert_eq!(fold(r#"select "Temperature" from weather"#), None);
        assert_eq!(fold("select temp from weather"), None);
        // Functions, aliases, strings, no table mentioned.
        assert_eq!(
            fold("select max(temperature) as temperature from weather").as_deref(),
            Some(r#"select max("Temperature") as temperature from weather"#)
        );
        assert_eq!(fold("select 'temperature' from weather"), None);
        assert_eq!(fold("select 1"), None);
    }

    #[test]
    fn error_positions_map_back() {
        let tables = vec!["Weather".to_string()];
        let f = fold_columns("select temperature, bad from weather", &tables, |_| {
            Some(vec!["Temperature".into()])
        })
        .unwrap();
        assert_eq!(f.sql, r#"select "Temperature", bad from weather"#);
        // `bad` is at 22 in the new text, 20 in the user's.
        assert_eq!(f.original(22), 20);
        assert_eq!(f.original(7), 7);
    }
}
