//! SQL over basalt tables, on primaries and replicas alike: DataFusion plans
//! and runs queries over the column files ([`provider`]); HTTP `/exec`
//! (QuestDB's JSON) and `/exp` (CSV, streamed) and the PostgreSQL wire
//! protocol ([`pg`]) are its front doors.
//!
//! Queries run on the engine's own threads (a tokio runtime, `basalt-sql`),
//! never on the ingest shards. Each query reads every table at one committed
//! txn ([`provider::QuerySchema`]); a txn is never seen in part.
//!
//! `CREATE TABLE` (QuestDB's form) and `DROP TABLE` are basalt's own
//! ([`ddl`]); DataFusion's DDL and DML are refused.

pub mod format;
pub mod pg;
pub mod provider;

use crate::sqltext::offset_of;
pub use crate::sqltext::{ddl, questdb, SqlError};

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider};
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::execution::context::{SQLOptions, SessionContext, SessionState};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::prelude::SessionConfig;

use crate::db::Database;

/// Stack of each query thread.
const SQL_THREAD_STACK_BYTES: usize = 64 << 20;
/// Longest statement accepted (bytes of SQL text).
pub const QUERY_BYTES_MAX: usize = 1 << 20;
/// Most binary operators (`+`, `=`, `AND`...) in a statement.
pub const OPERATORS_MAX: usize = 2_000;
/// Most `$n` placeholders in a statement (PostgreSQL's own limit).
pub const PARAMS_MAX: usize = 65_535;

impl SqlError {
    /// A DataFusion error, with the position its parser reports (`Line: l,
    /// Column: c`) turned into a character offset of `sql`.
    fn from_datafusion(e: DataFusionError, sql: &str) -> SqlError {
        use datafusion::sql::sqlparser::parser::ParserError;
        let e = e.find_root();
        let message = match e {
            DataFusionError::External(inner) => inner.to_string(),
            DataFusionError::SQL(p, _) => match p.as_ref() {
                ParserError::ParserError(m) | ParserError::TokenizerError(m) => m.clone(),
                ParserError::RecursionLimitExceeded => {
                    "the query nests too deeply (recursion limit exceeded)".into()
                }
            },
            DataFusionError::Plan(m) => m.clone(),
            other => other.to_string(),
        };
        // Names as the user wrote them, not fully qualified.
        let message = message.replace("basalt.public.", "");
        let position = line_column(&message)
            .map(|(l, c)| offset_of(sql, l, c))
            .or_else(|| quoted_name_at(&message, sql))
            .unwrap_or(0);
        SqlError::new(message, position)
    }
}

/// Where the first name quoted in `message` (`'x'`, or after `field named
/// `) appears in `sql`, ignoring ASCII case: what "table 'x' not found" and
/// "No field named x" point at.
fn quoted_name_at(message: &str, sql: &str) -> Option<usize> {
    let name = if let Some(rest) = message.split_once("field named ").map(|(_, r)| r) {
        rest.split(|c: char| c == '.' || c.is_whitespace())
            .next()?
            .trim_matches('"')
            .to_string()
    } else {
        let start = message.find('\'')? + 1;
        let len = message[start..].find('\'')?;
        message[start..start + len].to_string()
    };
    let name = name.rsplit('.').next()?.to_ascii_lowercase();
    if name.is_empty() {
        return None;
    }
    let byte = sql.to_ascii_lowercase().find(&name)?;
    Some(sql[..byte].chars().count())
}

/// `Line: l, Column: c` in a parser message.
fn line_column(message: &str) -> Option<(usize, usize)> {
    let at = message.find("Line: ")?;
    let rest = &message[at + 6..];
    let comma = rest.find(',')?;
    let line: usize = rest[..comma].trim().parse().ok()?;
    let rest = rest[comma..].strip_prefix(", Column: ")?;
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let column: usize = rest[..end].parse().ok()?;
    Some((line, column))
}

/// What a statement produced.
pub enum Output {
    /// Rows, streamed.
    Rows(SendableRecordBatchStream),
    /// A command's tag (`CREATE TABLE`, `DROP TABLE`, `BEGIN`...).
    Command(&'static str),
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct SqlOptions {
    /// Query threads (and DataFusion's target partitions).
    pub threads: usize,
    /// Rows per Arrow batch a scan produces.
    pub batch_rows: usize,
    /// Memory all running queries may hold together (sorts, hash tables).
    pub memory_bytes_max: usize,
}

impl Default for SqlOptions {
    fn default() -> Self {
        SqlOptions {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            batch_rows: 64 * 1024,
            memory_bytes_max: physical_memory_bytes() / 4,
        }
    }
}

fn check_size(sql: &str) -> Result<(), SqlError> {
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    if sql.len() > QUERY_BYTES_MAX {
        return Err(SqlError::new(
            format!(
                "the query is {} bytes, more than the limit of {QUERY_BYTES_MAX}",
                sql.len()
            ),
            0,
        ));
    }
    // A chain of binary operators parses (in a loop) into a tree as deep as
    // it is long, which later stages walk and drop recursively: past some
    // depth that overflows a thread's stack and aborts the process.
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
        return Ok(()); // the parser reports it, with its position
    };
    let operators = tokens
        .iter()
        .filter(|t| match t {
            Token::Plus
            | Token::Minus
            | Token::Mul
            | Token::Div
            | Token::Mod
            | Token::StringConcat
            | Token::Eq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq => true,
            Token::Word(w) => {
                w.quote_style.is_none()
                    && (w.value.eq_ignore_ascii_case("and") || w.value.eq_ignore_ascii_case("or"))
            }
            _ => false,
        })
        .count();
    if operators > OPERATORS_MAX {
        return Err(SqlError::new(
            format!("the query has {operators} operators, more than the limit of {OPERATORS_MAX}"),
            0,
        ));
    }
    Ok(())
}

/// This machine's RAM (1 GiB when it cannot be read).
fn physical_memory_bytes() -> usize {
    // SAFETY: sysconf has no preconditions.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages > 0 && page > 0 {
        (pages as usize).saturating_mul(page as usize)
    } else {
        1 << 30
    }
}

/// `node_role()`: the role of the node answering (`primary` or `replica`;
/// a node without replication takes writes: `primary`).
fn node_role_udf(
    control: Option<Arc<dyn crate::replication::RoleControl>>,
) -> datafusion::logical_expr::ScalarUDF {
    use datafusion::logical_expr::{ColumnarValue, Volatility};
    datafusion::logical_expr::create_udf(
        "node_role",
        vec![],
        DataType::Utf8,
        Volatility::Volatile,
        Arc::new(move |_args: &[ColumnarValue]| {
            let role = control
                .as_ref()
                .map_or("primary", |c| c.role_state().role.name());
            Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(role.into()))))
        }),
    )
}

/// The columns of [`role_rows`].
fn role_schema() -> SchemaRef {
    use datafusion::arrow::datatypes::{Field, Schema, TimeUnit};
    Arc::new(Schema::new(vec![
        Field::new("current_role", DataType::Utf8, false),
        Field::new("switch_in_flight", DataType::Boolean, false),
        Field::new("target_role", DataType::Utf8, true),
        Field::new("epoch", DataType::Int64, false),
        Field::new("writable", DataType::Boolean, false),
        Field::new("fenced", DataType::Boolean, false),
        Field::new("last_switch", DataType::Utf8, true),
        Field::new(
            "captured_at",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            false,
        ),
    ]))
}

/// Rows of one record batch of `cols` as a statement's answer.
fn one_row(
    schema: SchemaRef,
    cols: Vec<datafusion::arrow::array::ArrayRef>,
) -> Result<Output, SqlError> {
    let batch = datafusion::arrow::record_batch::RecordBatch::try_new(schema.clone(), cols)
        .map_err(|e| SqlError::new(e.to_string(), 0))?;
    let stream =
        datafusion::physical_plan::memory::MemoryStream::try_new(vec![batch], schema, None)
            .map_err(|e| SqlError::new(e.to_string(), 0))?;
    Ok(Output::Rows(Box::pin(stream)))
}

/// The columns of [`backup_rows`].
fn backup_schema() -> SchemaRef {
    use datafusion::arrow::datatypes::{Field, Schema};
    Arc::new(Schema::new(vec![
        Field::new("snapshot", DataType::Int64, false),
        Field::new("manifest", DataType::Utf8, false),
        Field::new("tables", DataType::Int64, false),
        Field::new("rows", DataType::Int64, false),
        Field::new("parts_uploaded", DataType::Int64, false),
        Field::new("bytes_uploaded", DataType::Int64, false),
        Field::new("parts_reused", DataType::Int64, false),
        Field::new("bytes_reused", DataType::Int64, false),
        Field::new("millis", DataType::Float64, false),
    ]))
}

/// The one row `BACKUP DATABASE` answers with, once the snapshot is complete.
fn backup_rows(r: &crate::replication::snapshot::SnapshotReport) -> Result<Output, SqlError> {
    use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
    let schema = backup_schema();
    let n = |v: u64| -> ArrayRef { Arc::new(Int64Array::from(vec![v as i64])) };
    let cols: Vec<ArrayRef> = vec![
        n(r.seq),
        Arc::new(StringArray::from(vec![r.key.clone()])),
        n(r.tables),
        n(r.rows),
        n(r.parts_uploaded),
        n(r.bytes_uploaded),
        n(r.parts_reused),
        n(r.bytes_reused),
        Arc::new(Float64Array::from(vec![r.millis])),
    ];
    one_row(schema, cols)
}

/// The one row `SWITCH ROLE` and `SWITCH STATUS` answer with.
fn role_rows(st: &crate::replication::RoleState) -> Result<Output, SqlError> {
    use datafusion::arrow::array::{
        ArrayRef, BooleanArray, Int64Array, StringArray, TimestampMicrosecondArray,
    };
    let schema = role_schema();
    let last = st.last_switch.as_ref().map(|s| {
        format!(
            "to {} {} in {:.1} ms: {}",
            s.to,
            if s.ok { "done" } else { "failed" },
            s.millis,
            s.message
        )
    });
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![st.role.name()])),
        Arc::new(BooleanArray::from(vec![st.switching.is_some()])),
        Arc::new(StringArray::from(vec![st.switching.map(|r| r.name())])),
        Arc::new(Int64Array::from(vec![st.epoch as i64])),
        Arc::new(BooleanArray::from(vec![st.writable])),
        Arc::new(BooleanArray::from(vec![st.fenced.is_some()])),
        Arc::new(StringArray::from(vec![last])),
        Arc::new(TimestampMicrosecondArray::from(vec![crate::db::now_us()])),
    ];
    one_row(schema, cols)
}

/// Plans and runs SQL against one data directory.
pub struct SqlEngine {
    data_dir: PathBuf,
    /// For `CREATE TABLE` and `DROP TABLE`; `None` or gone on a replica.
    db: Weak<Database>,
    /// Role switches; `None` without replication.
    control: Option<Arc<dyn crate::replication::RoleControl>>,
    template: SessionState,
    runtime: tokio::runtime::Runtime,
}

impl SqlEngine {
    /// An engine reading `data_dir`. `db` takes `CREATE TABLE` and `DROP
    /// TABLE` (refused while it refuses writes); `control` takes `SWITCH
    /// ROLE` and answers `node_role()`.
    pub fn start(
        data_dir: &Path,
        db: Weak<Database>,
        control: Option<Arc<dyn crate::replication::RoleControl>>,
        options: &SqlOptions,
    ) -> std::io::Result<Arc<SqlEngine>> {
        let threads = options.threads.max(1);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("basalt-sql")
            // Planning walks expression trees recursively; DataFusion's
            // recursion protection grows the stack on demand, this is the
            // headroom it starts from.
            .thread_stack_size(SQL_THREAD_STACK_BYTES)
            .enable_all()
            .build()?;
        let mut config = SessionConfig::new()
            .with_target_partitions(threads)
            .with_batch_size(options.batch_rows.max(1))
            .with_information_schema(true)
            .with_default_catalog_and_schema("basalt", "public");
        config.options_mut().sql_parser.dialect = datafusion::config::Dialect::PostgreSQL;
        // A query that needs more memory than this fails with "resources
        // exhausted" instead of taking the node (and its ingestion) down.
        let memory = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_memory_limit(options.memory_bytes_max, 1.0)
            .build_arc()
            .map_err(std::io::Error::other)?;
        let mut template = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(memory)
            .with_default_features()
            .build();
        {
            use datafusion::execution::FunctionRegistry;
            template
                .register_udf(Arc::new(node_role_udf(control.clone())))
                .map_err(std::io::Error::other)?;
        }
        Ok(Arc::new(SqlEngine {
            data_dir: data_dir.to_path_buf(),
            db,
            control,
            template,
            runtime,
        }))
    }

    /// The runtime queries run on (the PostgreSQL listener runs there too).
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        self.runtime.handle()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A session whose tables are read at one txn each: one per statement.
    fn session(&self) -> SessionContext {
        let catalog = MemoryCatalogProvider::new();
        catalog
            .register_schema(
                "public",
                Arc::new(provider::QuerySchema::new(&self.data_dir)),
            )
            .expect("a memory catalog takes any schema");
        let state = SessionStateBuilder::new_from_existing(self.template.clone()).build();
        let ctx = SessionContext::new_with_state(state);
        ctx.register_catalog("basalt", Arc::new(catalog));
        ctx
    }

    fn options() -> SQLOptions {
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(true)
    }

    /// Runs one statement. `params` binds `$1`, `$2`... placeholders.
    /// Call it on the engine's runtime ([`SqlEngine::runtime`]).
    pub async fn execute(
        &self,
        sql: &str,
        params: Option<Vec<ScalarValue>>,
        who: &crate::auth::Principal,
    ) -> Result<Output, SqlError> {
        check_size(sql)?;
        if let Some(stmt) = ddl::parse(sql)? {
            use crate::auth::Permission;
            let (need, what) = match &stmt {
                ddl::Ddl::SwitchRole { .. } => (Permission::Admin, "SWITCH ROLE"),
                ddl::Ddl::BackupDatabase => (Permission::Admin, "BACKUP DATABASE"),
                ddl::Ddl::SwitchStatus => (Permission::Read, "SWITCH STATUS"),
                ddl::Ddl::CreateTable { .. } => (Permission::Write, "CREATE TABLE"),
                ddl::Ddl::DropTable { .. } => (Permission::Write, "DROP TABLE"),
            };
            who.require(need, &what).map_err(SqlError::denied)?;
            if need == Permission::Admin {
                tracing::info!(target: "basalt::audit", action = what, user = who.user, "admin statement");
            }
            match stmt {
                ddl::Ddl::SwitchRole { to, timeout_ms } => {
                    let c = self.control()?;
                    let st = c
                        .switch_role(to, std::time::Duration::from_millis(timeout_ms))
                        .map_err(|e| SqlError::new(format!("SWITCH ROLE refused: {e}"), 0))?;
                    return role_rows(&st);
                }
                ddl::Ddl::SwitchStatus => return role_rows(&self.control()?.role_state()),
                ddl::Ddl::BackupDatabase => {
                    let c = self.control()?.clone();
                    // Uploads and waits on the store: off the async path.
                    let r = tokio::task::spawn_blocking(move || c.backup())
                        .await
                        .map_err(|e| SqlError::new(format!("BACKUP DATABASE: {e}"), 0))?
                        .map_err(|e| SqlError::new(format!("BACKUP DATABASE failed: {e}"), 0))?;
                    return backup_rows(&r);
                }
                _ => {}
            }
            // File creation, fsyncs and waits on the shards: off the
            // runtime's async path.
            return tokio::task::block_in_place(|| self.run_ddl(stmt)).map(Output::Command);
        }
        if let Some(tag) = ddl::session_command(sql) {
            return Ok(Output::Command(tag));
        }
        let folded = self.fold_names(sql);
        let back = |mut e: SqlError| {
            if let Some(f) = &folded {
                e.position = f.original(e.position);
            }
            e
        };
        let sql = folded.as_ref().map_or(sql, |f| f.sql.as_str());
        let rewritten = questdb::rewrite(sql, &self.data_dir).map_err(back)?;
        let sql = rewritten.as_deref().unwrap_or(sql);
        let located = |e: DataFusionError| {
            let mut e = SqlError::from_datafusion(e, sql);
            if rewritten.is_some() {
                // Positions in the rewritten text mean nothing to the user.
                e.position = 0;
                e
            } else {
                back(e)
            }
        };
        let ctx = self.session();
        let mut df = ctx
            .sql_with_options(sql, Self::options())
            .await
            .map_err(located)?;
        if let Some(p) = params {
            df = df
                .with_param_values(ParamValues::List(p.into_iter().map(Into::into).collect()))
                .map_err(located)?;
        }
        let stream = df.execute_stream().await.map_err(located)?;
        Ok(Output::Rows(stream))
    }

    /// The statement with unquoted column names spelled as stored (names
    /// are case-insensitive, as in QuestDB: [`crate::sqltext::names`]).
    fn fold_names(&self, sql: &str) -> Option<crate::sqltext::names::Folded> {
        let tables = crate::table::table_names(&self.data_dir);
        crate::sqltext::names::fold_columns(sql, &tables, |t| {
            crate::table::TableReader::open(&self.data_dir, t)
                .ok()
                .map(|r| r.schema().columns.iter().map(|c| c.name.clone()).collect())
        })
    }

    /// The types of a statement's placeholders (`None` where the query
    /// leaves one open) and the schema of its rows (empty for commands).
    pub async fn describe(
        &self,
        sql: &str,
    ) -> Result<(Vec<Option<DataType>>, SchemaRef), SqlError> {
        check_size(sql)?;
        let empty = || Arc::new(datafusion::arrow::datatypes::Schema::empty());
        match ddl::parse(sql)? {
            Some(ddl::Ddl::SwitchRole { .. } | ddl::Ddl::SwitchStatus) => {
                return Ok((Vec::new(), role_schema()))
            }
            Some(ddl::Ddl::BackupDatabase) => return Ok((Vec::new(), backup_schema())),
            _ => {}
        }
        if ddl::parse(sql)?.is_some() || ddl::session_command(sql).is_some() {
            return Ok((Vec::new(), empty()));
        }
        let folded = self.fold_names(sql);
        let sql = folded.as_ref().map_or(sql, |f| f.sql.as_str());
        let rewritten = questdb::rewrite(sql, &self.data_dir)?;
        let sql = rewritten.as_deref().unwrap_or(sql);
        let ctx = self.session();
        let plan = ctx
            .state()
            .create_logical_plan(sql)
            .await
            .map_err(|e| SqlError::from_datafusion(e, sql))?;
        Self::options()
            .verify_plan(&plan)
            .map_err(|e| SqlError::from_datafusion(e, sql))?;
        let types = plan
            .get_parameter_types()
            .map_err(|e| SqlError::from_datafusion(e, sql))?;
        let mut params: Vec<(usize, Option<DataType>)> = types
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix('$')?.parse::<usize>().ok().map(|n| (n, v)))
            .collect();
        params.sort_by_key(|(n, _)| *n);
        let count = params.last().map_or(0, |(n, _)| *n);
        if count > PARAMS_MAX {
            return Err(SqlError::new(
                format!("placeholder ${count} is past the limit of {PARAMS_MAX} parameters"),
                0,
            ));
        }
        let mut out = vec![None; count];
        for (n, t) in params {
            out[n - 1] = t;
        }
        let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        Ok((out, schema))
    }

    fn control(&self) -> Result<&Arc<dyn crate::replication::RoleControl>, SqlError> {
        self.control.as_ref().ok_or_else(|| {
            SqlError::new(
                "replication is off (--object-store off): this node has no role to switch and no store to back up to",
                0,
            )
        })
    }

    fn run_ddl(&self, stmt: ddl::Ddl) -> Result<&'static str, SqlError> {
        let refuse = |what: &str| {
            let why = match self.db.upgrade().and_then(|d| d.write_refusal()) {
                Some(crate::db::DbError::NotPrimary(m)) => m,
                _ => "this node is a read-only replica".into(),
            };
            SqlError::new(format!("{why}: run {what} on the primary"), 0)
        };
        let read_only = self
            .db
            .upgrade()
            .is_some_and(|d| d.write_refusal().is_some());
        let db = || {
            self.db
                .upgrade()
                .ok_or_else(|| SqlError::new("the database is shutting down", 0))
        };
        match stmt {
            ddl::Ddl::CreateTable {
                name,
                schema,
                if_not_exists,
            } => {
                if read_only {
                    return Err(refuse("CREATE TABLE"));
                }
                match db()?.create_table(&name, &schema) {
                    Ok(_) => Ok("CREATE TABLE"),
                    Err(crate::db::DbError::Table(crate::table::TableError::AlreadyExists(_)))
                        if if_not_exists =>
                    {
                        Ok("CREATE TABLE")
                    }
                    Err(e) => Err(SqlError::new(e.to_string(), 0)),
                }
            }
            ddl::Ddl::DropTable { name, if_exists } => {
                if read_only {
                    return Err(refuse("DROP TABLE"));
                }
                let db = db()?;
                match crate::table::resolve_name(&self.data_dir, &name) {
                    Some(t) => db
                        .drop_table(&t)
                        .map(|_| "DROP TABLE")
                        .map_err(|e| SqlError::new(e.to_string(), 0)),
                    None if if_exists => Ok("DROP TABLE"),
                    None => Err(SqlError::new(
                        format!("table does not exist [table={name}]"),
                        0,
                    )),
                }
            }
            // Answered with rows by `execute`.
            ddl::Ddl::SwitchRole { .. } | ddl::Ddl::SwitchStatus | ddl::Ddl::BackupDatabase => {
                Err(SqlError::new("SWITCH and BACKUP are answered with rows", 0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_positions_are_character_offsets() {
        assert_eq!(
            line_column("Expected: end of statement, found: cpu at Line: 2, Column: 6"),
            Some((2, 6))
        );
        assert_eq!(offset_of("select *\nfrm cpu", 2, 5), 13);
        assert_eq!(offset_of("sélect x", 1, 8), 7);
        assert_eq!(
            quoted_name_at("table 'nope' not found", "select * from NOPE"),
            Some(14)
        );
        assert_eq!(
            quoted_name_at(
                "No field named usage_x. Valid fields are cpu.host.",
                "select usage_x from cpu"
            ),
            Some(7)
        );
        assert_eq!(quoted_name_at("no quotes here", "select 1"), None);
    }
}
