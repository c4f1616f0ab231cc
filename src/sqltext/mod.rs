//! SQL text basalt reads itself, before DataFusion sees it: QuestDB's DDL
//! and admin statements ([`ddl`]) and its time-series clauses rewritten into
//! plain SQL ([`questdb`]). Only the SQL parser is needed (feature
//! `sql-text`), so the fuzz crate fuzzes these without building DataFusion.

pub mod ddl;
pub mod names;
pub mod questdb;

/// How a query failed, for a person: what, and where in the query text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SqlError {
    pub message: String,
    /// Character offset into the query the error points at (0 when unknown).
    pub position: usize,
    /// Refused for want of permission (HTTP 403, PostgreSQL 42501, QWP
    /// security error), not because the query is wrong.
    pub denied: bool,
}

impl SqlError {
    pub fn new(message: impl Into<String>, position: usize) -> SqlError {
        SqlError {
            message: message.into(),
            position,
            denied: false,
        }
    }

    /// A refusal for want of permission.
    pub fn denied(message: impl Into<String>) -> SqlError {
        SqlError {
            denied: true,
            ..SqlError::new(message, 0)
        }
    }
}

/// The character offset of 1-based `line`, `column` in `sql`.
pub(crate) fn offset_of(sql: &str, line: usize, column: usize) -> usize {
    let mut offset = 0;
    for (i, l) in sql.split('\n').enumerate() {
        if i + 1 == line {
            return offset + column.saturating_sub(1).min(l.chars().count());
        }
        offset += l.chars().count() + 1;
    }
    0
}
