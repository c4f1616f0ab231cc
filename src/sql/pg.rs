//! The PostgreSQL wire protocol (v3) over the SQL engine, so psql, psycopg,
//! Grafana's PostgreSQL source and other drivers can query basalt: simple
//! and extended query protocols, text and binary results, `$n` parameters.
//! With users (`--users`), SCRAM-SHA-256 (or md5 for users with an md5
//! password) and per-statement permissions; with `--tls-cert`, TLS
//! (`sslmode=require`/`verify-full`). Transactions are accepted and mean
//! nothing: every statement reads its own snapshot.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Float16Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type,
    Schema, SchemaRef, TimeUnit, TimestampMicrosecondType, UInt16Type, UInt32Type, UInt64Type,
    UInt8Type,
};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::ScalarValue;
use futures_util::{Sink, StreamExt};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    DataRowEncoder, DescribePortalResponse, DescribeStatementResponse, FieldInfo, QueryResponse,
    Response, Tag,
};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::messages::PgWireBackendMessage;
use tracing::{debug, info, warn};

use pgwire::api::auth::driver::AuthOutcome;
use pgwire::api::auth::md5pass::Md5PasswordAuth;
use pgwire::api::auth::mechanism::AuthMechanismFactory;
use pgwire::api::auth::sasl::scram::{ScramAuth, ScramSecret};
use pgwire::api::auth::{
    protocol_negotiation, save_startup_parameters_to_metadata, AuthDriver, AuthSource,
    DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::messages::startup::PasswordMessageFamily;
use pgwire::messages::PgWireFrontendMessage;

use super::format::Strings;
use super::{Output, SqlEngine, SqlError};
use crate::auth::{Auth, Door, Principal};

/// A statement parsed by a client's `Parse`: its text, and what `describe`
/// found (placeholder types, result schema).
#[derive(Clone, Debug)]
pub struct PgStatement {
    sql: String,
    params: Vec<Option<DataType>>,
    schema: SchemaRef,
}

fn user_error(e: SqlError) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(e)))
}

fn error_info(e: SqlError) -> ErrorInfo {
    let code = if e.denied {
        "42501" // insufficient_privilege
    } else {
        // syntax_error_or_access_rule_violation: the closest generic class.
        "42000"
    };
    ErrorInfo::new("ERROR".to_owned(), code.to_owned(), e.message)
}

/// The PostgreSQL type a result column is sent as.
fn pg_type(dt: &DataType) -> Type {
    match dt {
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => Type::INT8,
        DataType::Float16 | DataType::Float32 => Type::FLOAT4,
        DataType::Float64 => Type::FLOAT8,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        DataType::Date32 => Type::DATE,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(..) => {
            Type::VARCHAR
        }
        _ => Type::TEXT,
    }
}

/// The Arrow type a parameter the client typed as `t` is bound as.
fn param_type(t: &Type) -> Option<DataType> {
    Some(match *t {
        Type::BOOL => DataType::Boolean,
        Type::INT2 => DataType::Int16,
        Type::INT4 => DataType::Int32,
        Type::INT8 => DataType::Int64,
        Type::FLOAT4 => DataType::Float32,
        Type::FLOAT8 => DataType::Float64,
        Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
        Type::VARCHAR | Type::TEXT => DataType::Utf8,
        _ => return None,
    })
}

fn fields(schema: &Schema, format: &Format) -> Vec<FieldInfo> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            FieldInfo::new(
                f.name().clone(),
                None,
                None,
                pg_type(f.data_type()),
                format.format_for(i),
            )
        })
        .collect()
}

/// One column of a batch, as the wire type sends it.
enum Col<'a> {
    Plain(ArrayRef),
    Text(Strings<'a>),
    /// Symbols: keys into a dictionary, decoded row by row.
    Dict(&'a datafusion::arrow::array::Int32Array, Strings<'a>),
}

fn encode_batch(batch: &RecordBatch, fields: &Arc<Vec<FieldInfo>>) -> PgWireResult<Vec<DataRow>> {
    let cols: Vec<Col> = batch
        .columns()
        .iter()
        .map(|a| match a.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                Ok(Col::Text(Strings::new(a.as_ref()).expect("a string type")))
            }
            DataType::Dictionary(k, _) if **k == DataType::Int32 => {
                let d = a.as_dictionary::<Int32Type>();
                match Strings::new(d.values().as_ref()) {
                    Some(v) => Ok(Col::Dict(d.keys(), v)),
                    None => cast(a, &DataType::Utf8)
                        .map(Col::Plain)
                        .map_err(|e| PgWireError::ApiError(Box::new(e))),
                }
            }
            DataType::Dictionary(..) => cast(a, &DataType::Utf8)
                .map(Col::Plain)
                .map_err(|e| PgWireError::ApiError(Box::new(e))),
            DataType::Timestamp(unit, tz) if *unit != TimeUnit::Microsecond => {
                cast(a, &DataType::Timestamp(TimeUnit::Microsecond, tz.clone()))
                    .map(Col::Plain)
                    .map_err(|e| PgWireError::ApiError(Box::new(e)))
            }
            _ => Ok(Col::Plain(a.clone())),
        })
        .collect::<PgWireResult<_>>()?;
    let options = FormatOptions::default();
    let mut rows = Vec::with_capacity(batch.num_rows());
    let mut encoder = DataRowEncoder::new(fields.clone());
    for row in 0..batch.num_rows() {
        for (c, field) in cols.iter().zip(fields.iter()) {
            let text = field.format() == pgwire::api::results::FieldFormat::Text;
            match c {
                Col::Text(a) => encoder.encode_field(&a.get(row))?,
                Col::Dict(keys, values) => {
                    let v = (!keys.is_null(row))
                        .then(|| values.get(keys.value(row) as usize))
                        .flatten();
                    encoder.encode_field(&v)?;
                }
                Col::Plain(a) => encode_value(&mut encoder, a, row, &options, text)?,
            }
        }
        rows.push(encoder.take_row());
    }
    Ok(rows)
}

fn encode_value(
    encoder: &mut DataRowEncoder,
    a: &ArrayRef,
    row: usize,
    options: &FormatOptions,
    text: bool,
) -> PgWireResult<()> {
    macro_rules! prim {
        ($t:ty, $as:ty) => {{
            let p = a.as_primitive::<$t>();
            let v = (!p.is_null(row)).then(|| p.value(row) as $as);
            encoder.encode_field(&v)
        }};
    }
    match a.data_type() {
        DataType::Boolean => {
            let b = a.as_boolean();
            encoder.encode_field(&(!b.is_null(row)).then(|| b.value(row)))
        }
        DataType::Int8 => prim!(Int8Type, i16),
        DataType::Int16 => prim!(Int16Type, i16),
        DataType::UInt8 => prim!(UInt8Type, i16),
        DataType::Int32 => prim!(Int32Type, i32),
        DataType::UInt16 => prim!(UInt16Type, i32),
        DataType::Int64 => prim!(Int64Type, i64),
        DataType::UInt32 => prim!(UInt32Type, i64),
        DataType::UInt64 => {
            let p = a.as_primitive::<UInt64Type>();
            // Declared int8: a value past i64::MAX cannot be sent as one.
            let v = (!p.is_null(row))
                .then(|| i64::try_from(p.value(row)).ok())
                .flatten();
            encoder.encode_field(&v)
        }
        DataType::Float16 => {
            let p = a.as_primitive::<Float16Type>();
            encoder.encode_field(&(!p.is_null(row)).then(|| p.value(row).to_f32()))
        }
        DataType::Utf8 => {
            let s = a.as_string::<i32>();
            encoder.encode_field(&(!s.is_null(row)).then(|| s.value(row)))
        }
        // PostgreSQL's text for infinities is `Infinity`, which drivers
        // (JDBC among them) parse; pgwire would write Rust's `inf`.
        DataType::Float32 | DataType::Float64 if text && !a.is_null(row) => {
            let v = match a.data_type() {
                DataType::Float32 => f64::from(a.as_primitive::<Float32Type>().value(row)),
                _ => a.as_primitive::<Float64Type>().value(row),
            };
            match v {
                f64::INFINITY => encoder.encode_field(&"Infinity"),
                f64::NEG_INFINITY => encoder.encode_field(&"-Infinity"),
                _ if a.data_type() == &DataType::Float32 => prim!(Float32Type, f32),
                _ => prim!(Float64Type, f64),
            }
        }
        DataType::Float32 => prim!(Float32Type, f32),
        DataType::Float64 => prim!(Float64Type, f64),
        DataType::Timestamp(TimeUnit::Microsecond, tz) => {
            let p = a.as_primitive::<TimestampMicrosecondType>();
            let v = (!p.is_null(row))
                .then(|| chrono::DateTime::from_timestamp_micros(p.value(row)))
                .flatten();
            match tz {
                None => encoder.encode_field(&v.map(|t| t.naive_utc())),
                Some(_) => encoder.encode_field(&v),
            }
        }
        DataType::Date32 => {
            let p = a.as_primitive::<datafusion::arrow::datatypes::Date32Type>();
            let v = (!p.is_null(row))
                .then(|| {
                    chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?
                        .checked_add_signed(chrono::Duration::days(i64::from(p.value(row))))
                })
                .flatten();
            encoder.encode_field(&v)
        }
        _ => {
            let v = if a.is_null(row) {
                None
            } else {
                let f = ArrayFormatter::try_new(a.as_ref(), options)
                    .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
                Some(f.value(row).to_string())
            };
            encoder.encode_field(&v)
        }
    }
}

/// What a statement's output becomes on the wire.
fn response(output: Output, format: &Format) -> Response {
    match output {
        Output::Command(tag @ "BEGIN") => Response::TransactionStart(Tag::new(tag)),
        Output::Command(tag @ ("COMMIT" | "ROLLBACK")) => Response::TransactionEnd(Tag::new(tag)),
        Output::Command(tag) => Response::Execution(Tag::new(tag)),
        Output::Rows(stream) => {
            let fields = Arc::new(fields(&stream.schema(), format));
            let f = fields.clone();
            let rows = stream.flat_map(move |b| {
                let out: Vec<PgWireResult<DataRow>> = match b {
                    Ok(batch) => match encode_batch(&batch, &f) {
                        Ok(rows) => rows.into_iter().map(Ok).collect(),
                        Err(e) => vec![Err(e)],
                    },
                    Err(e) => vec![Err(user_error(SqlError::new(e.to_string(), 0)))],
                };
                futures_util::stream::iter(out)
            });
            Response::Query(QueryResponse::new(fields, rows))
        }
    }
}

/// The handlers of one listener (all connections share them).
pub struct PgHandler {
    engine: Arc<SqlEngine>,
    parser: Arc<PgParser>,
    auth: Arc<Auth>,
    startup: Arc<PgStartup>,
}

impl PgHandler {
    /// Whom the session runs as: its authenticated user (the startup
    /// handler let no one else in), or everyone when authentication is off.
    fn principal<C: ClientInfo>(&self, client: &C) -> PgWireResult<Principal> {
        // Set by the startup handler only once the login completed (or at
        // once without users): the startup user name alone proves nothing.
        match client.session_extensions().get::<LoggedIn>() {
            Some(p) => Ok(p.0.clone()),
            None => Err(fatal("28000", "not logged in".to_owned())),
        }
    }
}

pub struct PgParser {
    engine: Arc<SqlEngine>,
}

#[async_trait]
impl QueryParser for PgParser {
    type Statement = PgStatement;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<PgStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let (mut params, schema) = self.engine.describe(sql).await.map_err(user_error)?;
        // Types the client gave win over what the query leaves open.
        for (i, t) in types.iter().enumerate() {
            if let Some(dt) = t.as_ref().and_then(param_type) {
                if i < params.len() && params[i].is_none() {
                    params[i] = Some(dt);
                }
            }
        }
        Ok(Some(PgStatement {
            sql: sql.to_string(),
            params,
            schema,
        }))
    }

    fn get_parameter_types(&self, stmt: &PgStatement) -> PgWireResult<Vec<Type>> {
        Ok(stmt
            .params
            .iter()
            .map(|t| t.as_ref().map_or(Type::UNKNOWN, pg_type))
            .collect())
    }

    fn get_result_schema(
        &self,
        stmt: &PgStatement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(fields(
            &stmt.schema,
            column_format.unwrap_or(&Format::UnifiedText),
        ))
    }
}

#[async_trait]
impl SimpleQueryHandler for PgHandler {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // psql sends one statement per message; several separated by `;`
        // run one by one, each at its own snapshot.
        let who = self.principal(client)?;
        let mut out = Vec::new();
        for stmt in split_statements(query) {
            match self.engine.execute(stmt, None, &who).await {
                Ok(o) => out.push(response(o, &Format::UnifiedText)),
                Err(e) => {
                    out.push(Response::Error(Box::new(error_info(e))));
                    break;
                }
            }
        }
        if out.is_empty() {
            out.push(Response::EmptyQuery);
        }
        Ok(out)
    }
}

/// Splits on `;` outside quotes and comments; drops empty statements.
fn split_statements(sql: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quote, mut line_comment) = (0, None::<char>, false);
    let mut chars = sql.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if line_comment {
            line_comment = c != '\n';
            continue;
        }
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '-') if chars.peek().map(|x| x.1) == Some('-') => line_comment = true,
            (None, ';') => {
                out.push(&sql[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&sql[start..]);
    out.into_iter().filter(|s| !s.trim().is_empty()).collect()
}

/// Decodes the `Bind` values of `portal` as the statement's parameter types.
fn bind_params(portal: &Portal<PgStatement>) -> PgWireResult<Vec<ScalarValue>> {
    let stmt = &portal.statement.statement;
    let mut out = Vec::with_capacity(portal.parameter_len());
    for i in 0..portal.parameter_len() {
        let client_type = portal.statement.parameter_types.get(i).cloned().flatten();
        let want = stmt.params.get(i).cloned().flatten();
        let t = client_type
            .filter(|t| param_type(t).is_some())
            .or_else(|| want.as_ref().map(pg_type))
            .unwrap_or(Type::VARCHAR);
        let v = match t {
            Type::BOOL => ScalarValue::Boolean(portal.parameter::<bool>(i, &t)?),
            Type::INT2 => ScalarValue::Int16(portal.parameter::<i16>(i, &t)?),
            Type::INT4 => ScalarValue::Int32(portal.parameter::<i32>(i, &t)?),
            Type::INT8 => ScalarValue::Int64(portal.parameter::<i64>(i, &t)?),
            Type::FLOAT4 => ScalarValue::Float32(portal.parameter::<f32>(i, &t)?),
            Type::FLOAT8 => ScalarValue::Float64(portal.parameter::<f64>(i, &t)?),
            Type::TIMESTAMP => ScalarValue::TimestampMicrosecond(
                portal
                    .parameter::<chrono::NaiveDateTime>(i, &t)?
                    .map(|d| d.and_utc().timestamp_micros()),
                None,
            ),
            _ => ScalarValue::Utf8(portal.parameter::<String>(i, &Type::VARCHAR)?),
        };
        // Cast to what the query expects where it says.
        let v = match &want {
            Some(dt) if v.data_type() != *dt => v
                .cast_to(dt)
                .map_err(|e| user_error(SqlError::new(format!("parameter ${}: {e}", i + 1), 0)))?,
            _ => v,
        };
        out.push(v);
    }
    Ok(out)
}

#[async_trait]
impl ExtendedQueryHandler for PgHandler {
    type Statement = PgStatement;
    type QueryParser = PgParser;

    fn query_parser(&self) -> Arc<PgParser> {
        self.parser.clone()
    }

    async fn do_describe_statement<C>(
        &self,
        _client: &mut C,
        target: &StoredStatement<PgStatement>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PgStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let params = self.parser.get_parameter_types(&target.statement)?;
        Ok(DescribeStatementResponse::new(
            params,
            fields(&target.statement.schema, &Format::UnifiedText),
        ))
    }

    async fn do_describe_portal<C>(
        &self,
        _client: &mut C,
        target: &Portal<PgStatement>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PgStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        Ok(DescribePortalResponse::new(fields(
            &target.statement.statement.schema,
            &target.result_column_format,
        )))
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<PgStatement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PgStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let params = bind_params(portal)?;
        let sql = &portal.statement.statement.sql;
        let params = (!params.is_empty()).then_some(params);
        let who = self.principal(client)?;
        let output = self
            .engine
            .execute(sql, params, &who)
            .await
            .map_err(user_error)?;
        if let Output::Rows(stream) = &output {
            // The client was told the columns at Parse; a column added since
            // (by ingestion) would not match them.
            let described = &portal.statement.statement.schema;
            let now = stream.schema();
            let same = described.fields().len() == now.fields().len()
                && described
                    .fields()
                    .iter()
                    .zip(now.fields())
                    .all(|(a, b)| pg_type(a.data_type()) == pg_type(b.data_type()));
            if !same {
                return Err(user_error(SqlError::new(
                    "cached plan must not change result type (the table's columns changed since the statement was prepared; prepare it again)",
                    0,
                )));
            }
        }
        Ok(response(output, &portal.result_column_format))
    }
}

impl PgHandler {
    fn again(&self) -> PgHandler {
        PgHandler {
            engine: self.engine.clone(),
            parser: self.parser.clone(),
            auth: self.auth.clone(),
            startup: self.startup.clone(),
        }
    }
}

impl PgWireServerHandlers for PgHandler {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::new(self.again())
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::new(self.again())
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }
}

/// The principal a session logged in as (in pgwire's session extensions).
struct LoggedIn(Principal);

/// Marks a session that logs in with SASL (SCRAM); true once its
/// SASLInitialResponse was seen.
struct Sasl(std::sync::atomic::AtomicBool);

fn fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_owned(),
        code.to_owned(),
        message,
    )))
}

/// Whether `body` is a well-formed SASLInitialResponse (mechanism name,
/// then a length that fits the rest, or -1). pgwire's decoder trusts the
/// length and panics on a short body.
fn sasl_initial_ok(body: &[u8]) -> bool {
    let Some(nul) = body.iter().position(|b| *b == 0) else {
        return false;
    };
    let rest = &body[nul + 1..];
    let Some(len) = rest.get(..4) else {
        return false;
    };
    let len = i32::from_be_bytes(len.try_into().expect("4 bytes"));
    len == -1 || (len >= 0 && len as usize <= rest.len() - 4)
}

/// The users' secrets as pgwire's mechanisms ask for them.
#[derive(Debug)]
struct PgSecrets(Arc<Auth>);

#[async_trait]
impl AuthSource for PgSecrets {
    /// md5: `md5` + md5(stored md5(password ‖ user) ‖ salt), with a fresh
    /// salt per login.
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().unwrap_or_default();
        let stored = self
            .0
            .users()
            .and_then(|u| u.get(user))
            .and_then(|u| u.password_md5.clone())
            .ok_or_else(|| PgWireError::InvalidPassword(user.to_owned()))?;
        let salt: [u8; 4] = crate::auth::random_bytes();
        let mut inner = stored.as_bytes()[3..].to_vec();
        inner.extend_from_slice(&salt);
        let hashed = format!("md5{:x}", md5::compute(inner));
        Ok(Password::new(Some(salt.to_vec()), hashed.into_bytes()))
    }

    async fn get_scram_secret(&self, login: &LoginInfo) -> PgWireResult<(ScramSecret, Option<()>)> {
        let user = login.user().unwrap_or_default();
        let found = self
            .0
            .users()
            .and_then(|u| u.get(user))
            .and_then(|u| u.password.as_ref());
        let secret = match found {
            Some(v) => ScramSecret::Verifier {
                salt: v.salt.clone(),
                iterations: v.iterations as usize,
                stored_key: v.stored_key.to_vec(),
                server_key: v.server_key.to_vec(),
            },
            // An unknown user gets a random verifier: the exchange runs to
            // the end and fails as a wrong password does, so names cannot
            // be probed.
            None => ScramSecret::Verifier {
                salt: crate::auth::random_bytes::<16>().to_vec(),
                iterations: crate::auth::SCRAM_ITERATIONS as usize,
                stored_key: crate::auth::random_bytes::<32>().to_vec(),
                server_key: crate::auth::random_bytes::<32>().to_vec(),
            },
        };
        Ok((secret, None))
    }
}

/// The startup of a PostgreSQL session: with users, SCRAM-SHA-256 (md5 for
/// users who have an md5 password); a failure is counted, audited, held
/// back by the per-peer slowdown, and answered `28P01`. Without users,
/// everyone is let in.
pub struct PgStartup {
    auth: Arc<Auth>,
    /// TLS is configured: plaintext sessions are refused.
    tls: bool,
    driver: AuthDriver<DefaultServerParameterProvider>,
    scram: Arc<dyn AuthMechanismFactory>,
    md5: Arc<dyn AuthMechanismFactory>,
}

impl PgStartup {
    fn new(auth: Arc<Auth>, tls: bool) -> PgStartup {
        let secrets = Arc::new(PgSecrets(auth.clone()));
        PgStartup {
            tls,
            driver: AuthDriver::new(DefaultServerParameterProvider::default()),
            scram: Arc::new(ScramAuth::new(secrets.clone())),
            md5: Arc::new(Md5PasswordAuth::new(secrets)),
            auth,
        }
    }

    async fn refuse<C: ClientInfo>(&self, client: &C, e: PgWireError) -> PgWireError {
        let user = client.metadata().get("user").cloned().unwrap_or_default();
        let why = match &e {
            PgWireError::InvalidPassword(_) => crate::auth::Denied::Invalid,
            other => crate::auth::Denied::Malformed(other.to_string()),
        };
        let delay = self
            .auth
            .failed(Door::Pg, Some(client.socket_addr().ip()), &user, &why);
        tokio::time::sleep(delay).await;
        // Always FATAL: pgwire lets a session go on after a non-fatal error,
        // and this one never logged in.
        match e {
            // PostgreSQL's own words and the user's name (SCRAM's
            // client-first carries none, so pgwire's message has "").
            PgWireError::InvalidPassword(_) => fatal(
                "28P01",
                format!("password authentication failed for user \"{user}\""),
            ),
            PgWireError::UserError(mut info) => {
                info.severity = "FATAL".to_owned();
                PgWireError::UserError(info)
            }
            other => fatal("28000", format!("authentication failed: {other}")),
        }
    }
}

#[async_trait]
impl StartupHandler for PgStartup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                if self.tls && !client.is_secure() {
                    return Err(fatal(
                        "28000",
                        "this node accepts PostgreSQL connections over TLS only: connect with sslmode=require or verify-full".to_owned(),
                    ));
                }
                let Some(users) = self.auth.users() else {
                    client
                        .session_extensions()
                        .insert(LoggedIn(Principal::anonymous()));
                    return self.driver.complete_authentication(client, None).await;
                };
                let Some(name) = client.metadata().get("user").cloned() else {
                    return Err(self.refuse(client, PgWireError::UserNameRequired).await);
                };
                let wait = self.auth.admit(Some(client.socket_addr().ip()));
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                let md5 = users
                    .get(&name)
                    .is_some_and(|u| u.password.is_none() && u.password_md5.is_some());
                let mechanism = if md5 {
                    self.md5.create()
                } else {
                    client
                        .session_extensions()
                        .insert(Sasl(std::sync::atomic::AtomicBool::new(false)));
                    self.scram.create()
                };
                if let Err(e) = self.driver.begin_authentication(client, mechanism).await {
                    return Err(self.refuse(client, e).await);
                }
                Ok(())
            }
            PgWireFrontendMessage::PasswordMessageFamily(m) => {
                let sasl = client.session_extensions().get::<Sasl>();
                if let (Some(sasl), PasswordMessageFamily::Raw(body)) = (sasl, &m) {
                    if !sasl.0.swap(true, std::sync::atomic::Ordering::Relaxed)
                        && !sasl_initial_ok(body)
                    {
                        let e = fatal("08P01", "malformed SASLInitialResponse".to_owned());
                        return Err(self.refuse(client, e).await);
                    }
                }
                match self.driver.advance_authentication(client, m).await {
                    Ok(AuthOutcome::Authenticated { final_message, .. }) => {
                        let name = client.metadata().get("user").cloned().unwrap_or_default();
                        let Some(who) = self.auth.users().and_then(|u| u.get(&name)) else {
                            return Err(fatal("28000", format!("no user {name:?}")));
                        };
                        client
                            .session_extensions()
                            .insert(LoggedIn(who.principal()));
                        self.auth.succeeded(Door::Pg);
                        self.driver
                            .complete_authentication(client, final_message)
                            .await
                    }
                    Ok(AuthOutcome::InProgress) => Ok(()),
                    Err(e) => Err(self.refuse(client, e).await),
                }
            }
            _ => Ok(()),
        }
    }
}

/// Connections served at once; more are closed at accept.
pub const PG_CONNECTIONS_MAX: usize = 256;

/// Binds `addr` and serves PostgreSQL clients on the engine's runtime until
/// `stop` resolves. Returns the bound address.
pub fn listen(
    engine: Arc<SqlEngine>,
    addr: SocketAddr,
    auth: Arc<Auth>,
    tls: Option<crate::auth::tls::Tls>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let local = std_listener.local_addr()?;
    let handle = engine.runtime().clone();
    let handler = Arc::new(PgHandler {
        engine: engine.clone(),
        parser: Arc::new(PgParser {
            engine: engine.clone(),
        }),
        startup: Arc::new(PgStartup::new(auth.clone(), tls.is_some())),
        auth,
    });
    let tls = tls.map(|t| t.pg_acceptor());
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    handle.spawn(async move {
        let listener = match tokio::net::TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "PostgreSQL listener failed to start");
                return;
            }
        };
        info!(addr = %local, "serving the PostgreSQL wire protocol");
        let mut stop = stop;
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.changed() => return,
            };
            let (socket, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "PostgreSQL accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = crate::server::Slot::enter(&connections, PG_CONNECTIONS_MAX) else {
                warn!(peer = %peer, limit = PG_CONNECTIONS_MAX, "refusing PostgreSQL connection: too many open");
                continue;
            };
            let _ = socket.set_nodelay(true);
            let handler = handler.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                // Released when the task ends, a panic in it included.
                let _slot = slot;
                if let Err(e) = pgwire::tokio::process_socket(socket, tls, handler).await {
                    debug!(peer = %peer, error = %e, "PostgreSQL connection ended with an error");
                }
            });
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::{sasl_initial_ok, split_statements};

    #[test]
    fn sasl_initial_responses_that_would_panic_pgwire_are_caught() {
        let mut ok = b"SCRAM-SHA-256\0".to_vec();
        ok.extend_from_slice(&3i32.to_be_bytes());
        ok.extend_from_slice(b"n,,");
        assert!(sasl_initial_ok(&ok));
        let mut none = b"SCRAM-SHA-256\0".to_vec();
        none.extend_from_slice(&(-1i32).to_be_bytes());
        assert!(sasl_initial_ok(&none));
        // No length, a length past the end, a negative one, no name.
        assert!(!sasl_initial_ok(b"SCRAM-SHA-256\0"));
        let mut long = b"SCRAM-SHA-256\0".to_vec();
        long.extend_from_slice(&100i32.to_be_bytes());
        long.extend_from_slice(b"n,,");
        assert!(!sasl_initial_ok(&long));
        let mut neg = b"X\0".to_vec();
        neg.extend_from_slice(&(-2i32).to_be_bytes());
        assert!(!sasl_initial_ok(&neg));
        assert!(!sasl_initial_ok(b"SCRAM-SHA-256"));
    }

    #[test]
    fn splits_outside_quotes() {
        assert_eq!(
            split_statements("select ';'; select 2 -- a;b\n; ;"),
            vec!["select ';'", " select 2 -- a;b\n"]
        );
    }
}
