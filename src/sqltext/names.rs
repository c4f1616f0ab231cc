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
//! tables with that name ignoring case. Left alone: words followed by `(`
//! (functions), names the statement defines as aliases (`AS x`, `x AS (`
//! for CTEs) except inside a function's arguments (`avg(temperature) AS
//! temperature ... ORDER BY temperature` folds only the first), table names, type names after `::`, words right
//! before a string literal (`TIMESTAMP '2024-01-01'`) or right after one
//! (`INTERVAL '1' hour`), and the field of `EXTRACT(field FROM ...)`. Only
//! the replaced words change: the rest of the text is copied as written.

use std::collections::{HashMap, HashSet};

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use super::offset_of;

/// The statement with column names spelled as stored, and where quotes
/// were added, so that positions of errors in the new text map back to the
/// user's text ([`Folded::original`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Folded {
    pub sql: String,
    /// (character offset of the opening quote in the new text, characters
    /// of the word) for each replaced word, in order.
    quoted: Vec<(usize, usize)>,
}

impl Folded {
    /// The character offset in the user's text of `pos` in the new text.
    pub fn original(&self, pos: usize) -> usize {
        let mut shift = 0;
        for &(q, len) in &self.quoted {
            if pos > q {
                shift += 1; // the opening quote
            }
            if pos >= q + len + 2 {
                shift += 1; // the closing quote
            }
        }
        pos - shift
    }
}

fn is_word(t: &Token, kw: &str) -> bool {
    matches!(t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(kw))
}

fn is_string(t: &Token) -> bool {
    matches!(
        t,
        Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::EscapedStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::DollarQuotedString(_)
    )
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
    if tables.is_empty() {
        return None;
    }
    let all = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize_with_location()
        .ok()?;
    // The significant tokens (no white space or comments).
    let tokens: Vec<&TokenWithSpan> = all
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .collect();
    let by_lower: HashMap<String, &String> = tables.iter().map(|t| (t.to_lowercase(), t)).collect();
    // Columns of the tables the statement mentions, by lower-case name;
    // `None` marks a name two columns share ignoring case.
    let mut columns: HashMap<String, Option<String>> = HashMap::new();
    let mut seen_tables: Vec<&String> = Vec::new();
    // Names the statement defines itself (aliases, CTEs): never folded.
    let mut defined: HashSet<String> = HashSet::new();
    for (i, t) in tokens.iter().enumerate() {
        let Token::Word(w) = &t.token else { continue };
        let lower = w.value.to_lowercase();
        let prev_as = i > 0 && is_word(&tokens[i - 1].token, "as");
        let cte = tokens.get(i + 1).is_some_and(|n| is_word(&n.token, "as"))
            && tokens.get(i + 2).is_some_and(|n| n.token == Token::LParen);
        if prev_as || cte {
            defined.insert(lower.clone());
        }
        let Some(table) = by_lower.get(&lower) else {
            continue;
        };
        if seen_tables.contains(table) {
            continue;
        }
        seen_tables.push(table);
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
    columns.retain(|lower, stored| {
        stored.as_deref().is_some_and(|s| s != lower) && !by_lower.contains_key(lower)
    });
    if columns.is_empty() {
        return None;
    }
    // (character offset in `sql`, characters, stored name) of each word to replace.
    let mut edits: Vec<(usize, usize, &str)> = Vec::new();
    // For each open parenthesis: whether it opens a function's arguments.
    let mut parens: Vec<bool> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        match &t.token {
            Token::LParen => {
                let call = i > 0 && matches!(tokens[i - 1].token, Token::Word(_));
                parens.push(call);
                continue;
            }
            Token::RParen => {
                parens.pop();
                continue;
            }
            _ => {}
        }
        let Token::Word(w) = &t.token else { continue };
        if w.quote_style.is_some() {
            continue;
        }
        let lower = w.value.to_lowercase();
        let Some(Some(stored)) = columns.get(&lower) else {
            continue;
        };
        if defined.contains(&lower) && !parens.contains(&true) {
            // The alias, where it is visible (or its definition).
            continue;
        }
        let prev = i.checked_sub(1).map(|k| &tokens[k].token);
        let next = tokens.get(i + 1).map(|n| &n.token);
        let call = next == Some(&Token::LParen);
        let cast = prev == Some(&Token::DoubleColon);
        let typed_literal = next.is_some_and(is_string) || prev.is_some_and(is_string);
        let extract_field =
            prev == Some(&Token::LParen) && i >= 2 && is_word(&tokens[i - 2].token, "extract");
        if call || cast || typed_literal || extract_field {
            continue;
        }
        let at = offset_of(
            sql,
            t.span.start.line as usize,
            t.span.start.column as usize,
        );
        edits.push((at, w.value.chars().count(), stored));
    }
    if edits.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(sql.len() + 2 * edits.len());
    let mut quoted = Vec::with_capacity(edits.len());
    let mut chars = sql.chars();
    let mut at = 0;
    let mut written = 0;
    for (start, len, stored) in edits {
        out.extend(chars.by_ref().take(start - at));
        written += start - at;
        chars.by_ref().take(len).for_each(drop);
        at = start + len;
        quoted.push((written, stored.chars().count()));
        out.push('"');
        out.push_str(&stored.replace('"', "\"\""));
        out.push('"');
        written += stored.chars().count() + 2;
    }
    out.extend(chars);
    Some(Folded { sql: out, quoted })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold(sql: &str) -> Option<String> {
        let tables = vec!["Weather".to_string(), "cpu".to_string()];
        fold_columns(sql, &tables, |t| match t {
            "Weather" => Some(vec![
                "City".into(),
                "Temperature".into(),
                "Timestamp".into(),
                "Year".into(),
            ]),
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
    fn the_rest_of_the_text_is_kept_as_written() {
        // Escaped quotes, E-strings, comments and spacing stay byte for byte.
        assert_eq!(
            fold("select temperature\n  -- note\n from weather where city = 'O''Hare' or city = E'a\\'b'")
                .as_deref(),
            Some("select \"Temperature\"\n  -- note\n from weather where \"City\" = 'O''Hare' or \"City\" = E'a\\'b'")
        );
    }

    #[test]
    fn what_is_left_alone() {
        // Already stored in lower case, quoted, other tables' columns.
        assert_eq!(fold("select ts from weather"), None);
        assert_eq!(fold(r#"select "Temperature" from weather"#), None);
        assert_eq!(fold("select temp from weather"), None);
        // Strings, no table mentioned.
        assert_eq!(fold("select 'temperature' from weather"), None);
        assert_eq!(fold("select temperature"), None);
        // Type names and typed literals, EXTRACT fields.
        assert_eq!(
            fold("select timestamp from weather where timestamp > TIMESTAMP '2024-01-01' and city::varchar = 'x'")
                .as_deref(),
            Some(r#"select "Timestamp" from weather where "Timestamp" > TIMESTAMP '2024-01-01' and "City"::varchar = 'x'"#)
        );
        assert_eq!(
            fold("select extract(year from timestamp), year from weather").as_deref(),
            Some(r#"select extract(year from "Timestamp"), "Year" from weather"#)
        );
        // An alias: folded inside a function's arguments only.
        assert_eq!(
            fold("select city, avg(temperature) as temperature from weather group by city order by temperature")
                .as_deref(),
            Some(r#"select "City", avg("Temperature") as temperature from weather group by "City" order by temperature"#)
        );
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
        // Inside the quoted word: the same character of the user's word.
        assert_eq!(f.original(9), 8);
    }
}
