//! The `basalt` command.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use basalt::batch::Value;
use basalt::db::{Database, DbError, DbOptions};
use basalt::gen::{CpuGenerator, BASE_TS_US};
use basalt::io::EngineChoice;
use basalt::table::{ScanResult, TableError};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "basalt",
    version,
    about = "basalt: a time-series storage node",
    long_about = "basalt: a time-series storage node.\n\n\
        Rows are made durable in a write-ahead log on thread-per-core shards \
        (io_uring through glommio or tokio-uring, or portable pwrite/fdatasync), \
        then applied into columnar, time-partitioned table files.\n\n\
        Without a subcommand, runs `serve`: ILP over HTTP on 127.0.0.1:9000 and \
        over TCP on 127.0.0.1:9009, data in ./basalt-data.\n\n\
        Every option can also be set in a TOML file (--config) or as BASALT_<NAME>; \
        flags win over the environment, the environment over the file."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Args, Clone)]
struct NodeArgs {
    /// TOML file of options (keys as the long options with `_`: `data_dir`,
    /// `http`, `shards`, ...). Flags and BASALT_* variables override it.
    #[arg(long, global = true, env = "BASALT_CONFIG")]
    config: Option<PathBuf>,
    /// Directory holding the tables and their WALs.
    #[arg(
        long,
        global = true,
        env = "BASALT_DATA_DIR",
        default_value = "basalt-data"
    )]
    data_dir: PathBuf,
    /// WAL I/O engine: auto (io_uring via glommio when the kernel allows it,
    /// else tokio-uring, else portable), glommio, tokio-uring or portable.
    #[arg(long, global = true, env = "BASALT_IO_ENGINE", default_value = "auto")]
    io_engine: EngineChoice,
    /// Shard threads, each pinned to a core. 0 = one per core.
    #[arg(long, global = true, env = "BASALT_SHARDS", default_value_t = 0)]
    shards: usize,
    /// Log lines on stderr: `text` (coloured only on a terminal) or `json`
    /// (one object per line, for log shippers). BASALT_LOG sets the level
    /// (`info` by default; `warn`, `debug`, or per module).
    #[arg(long, global = true, env = "BASALT_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// How often applied txns are made durable in the table files (and their
    /// WAL dropped). Shorter: less WAL to replay after a crash; longer: fewer
    /// fsync bursts next to commits.
    #[arg(
        long,
        global = true,
        env = "BASALT_CHECKPOINT_INTERVAL_MS",
        default_value_t = 10_000
    )]
    checkpoint_interval_ms: u64,
    /// Least time between two apply steps: committed rows become visible to
    /// readers within about this long. Longer: fewer, larger writes into the
    /// table files next to the WAL's fdatasyncs.
    #[arg(
        long,
        global = true,
        env = "BASALT_APPLY_INTERVAL_MS",
        default_value_t = 5
    )]
    apply_interval_ms: u64,
    /// The object store replication goes through (the only link between
    /// nodes): `s3::bucket=B;root=R;region=..;endpoint=..;access_key_id=..;
    /// secret_access_key=..;allow_http=..;`, `azblob::container=C;root=R;
    /// account_name=..;account_key=..;endpoint=..;use_emulator=..;`,
    /// `gcs::bucket=B;root=R;credential_path=..;`, `fs::root=DIR;` (shared
    /// filesystem, fsynced), `memory::` (tests), or `off`. Default:
    /// `fs::root=<data-dir>/_replication;`. Credentials missing here come
    /// from the environment (AWS_*, AZURE_*, GOOGLE_*) and are never printed.
    /// While it is not `off`, WAL is kept until it is uploaded.
    #[arg(long, global = true, env = "BASALT_OBJECT_STORE")]
    object_store: Option<String>,
    /// The role the node starts in. primary: takes writes and uploads
    /// segments (after confirming, or on a fresh store claiming, ownership
    /// of the store's history; a primary superseded while it was down
    /// starts fenced and refuses writes). replica: read-only, applies what
    /// the primary uploaded to --object-store. `SWITCH ROLE TO PRIMARY |
    /// REPLICA` changes it without a restart (docs/failover.md).
    #[arg(long, global = true, env = "BASALT_ROLE", default_value = "primary", value_parser = ["primary", "replica"])]
    role: String,
    /// Where snapshots (backups) go and are read from, if not the
    /// replication store (--object-store): a connection string of the same
    /// forms. Give the same one to the primary, its replicas (they
    /// bootstrap from it), `basalt restore` and `basalt backups`.
    #[arg(long, global = true, env = "BASALT_BACKUP_OBJECT_STORE")]
    backup_object_store: Option<String>,
}

/// Options of `serve`. Like every option, each can also be set in the
/// `--config` file (key = the option's name with `_`, e.g. `http_request_bytes_max`)
/// or as `BASALT_<NAME>`; flags win over the environment, the environment over the file.
#[derive(Args, Clone)]
#[command(next_help_heading = "Server options (serve)")]
struct ServeArgs {
    /// Address for ILP over HTTP (POST /write, /api/v2/write; GET /ping, /settings).
    #[arg(
        long,
        global = true,
        env = "BASALT_HTTP",
        default_value = "127.0.0.1:9000"
    )]
    http: String,
    /// Address for ILP over TCP.
    #[arg(
        long,
        global = true,
        env = "BASALT_ILP",
        default_value = "127.0.0.1:9009"
    )]
    ilp: String,
    /// Address for the PostgreSQL wire protocol (psql, psycopg, Grafana),
    /// or `off`. SQL over HTTP is GET /exec (JSON) and /exp (CSV) on --http.
    #[arg(
        long,
        global = true,
        env = "BASALT_PG",
        default_value = "127.0.0.1:8812"
    )]
    pg: String,
    /// Users file (TOML, docs/security.md): who may log in on every port
    /// (HTTP basic or bearer token, ILP/TCP's ECDSA challenge, PostgreSQL
    /// SCRAM-SHA-256) and with what permission (read-only, read-write,
    /// admin). Secrets are stored hashed: `basalt user password|token|ilp-key`
    /// makes the entries. BASALT_USERS_TOML may hold the file's text instead.
    /// Without users, every port is open to whoever reaches it, which basalt
    /// refuses on non-loopback addresses (see --allow-unauthenticated).
    #[arg(long, global = true, env = "BASALT_USERS")]
    users: Option<PathBuf>,
    /// Serve non-loopback addresses without users: anyone who reaches a port
    /// may read and write every table. Only for networks you trust.
    #[arg(
        long,
        global = true,
        env = "BASALT_ALLOW_UNAUTHENTICATED",
        num_args = 0..=1,
        default_value_t = false,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    allow_unauthenticated: bool,
    /// TLS on every port (https/wss, tcps, PostgreSQL sslmode): the
    /// certificate chain (PEM, the node's own certificate first). Reloaded
    /// without a restart when the file changes.
    #[arg(long, global = true, env = "BASALT_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, global = true, env = "BASALT_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// With --tls-cert: CA certificates (PEM) that every client's
    /// certificate must chain to; clients without one are refused.
    #[arg(
        long,
        global = true,
        env = "BASALT_TLS_CLIENT_CA",
        requires = "tls_cert"
    )]
    tls_client_ca: Option<PathBuf>,
    /// Partition scheme of tables created by ingestion: HOUR, DAY, WEEK, MONTH or YEAR.
    #[arg(
        long,
        global = true,
        env = "BASALT_PARTITION_BY",
        default_value = "DAY"
    )]
    partition_by: basalt::table::PartitionBy,
    /// HTTP request bodies larger than this (also after gunzip) get 413.
    #[arg(long, global = true, env = "BASALT_HTTP_REQUEST_BYTES_MAX", default_value_t = 256 * 1024 * 1024)]
    http_request_bytes_max: usize,
    /// ILP/TCP lines longer than this close the connection.
    #[arg(long, global = true, env = "BASALT_ILP_LINE_BYTES_MAX", default_value_t = 1024 * 1024)]
    ilp_line_bytes_max: usize,
    /// ILP/TCP: a connection's rows are committed once it holds this many...
    #[arg(
        long,
        global = true,
        env = "BASALT_ILP_COMMIT_ROWS",
        default_value_t = 100_000
    )]
    ilp_commit_rows: usize,
    /// ... or once the oldest uncommitted row is this old (and when the peer closes).
    #[arg(
        long,
        global = true,
        env = "BASALT_ILP_COMMIT_INTERVAL_MS",
        default_value_t = 100
    )]
    ilp_commit_interval_ms: u64,
    /// Connections served at once (HTTP and TCP together); more are closed.
    #[arg(
        long,
        global = true,
        env = "BASALT_CONNECTIONS_MAX",
        default_value_t = 4096
    )]
    connections_max: usize,
    /// Primary: a segment is sealed and uploaded once its WAL records
    /// reach this size... [default by store: 1048576 on fs, 2097152 on
    /// cloud stores]
    #[arg(long, global = true, env = "BASALT_SEGMENT_BYTES_MAX")]
    segment_bytes_max: Option<usize>,
    /// ... or once its first txn is this old, whichever comes first. At a
    /// steady load this is about one PUT per table per interval. [default
    /// by store: 0 on fs (sealed as soon as the uploader caught up and the
    /// previous PUT landed: a shared filesystem has no price per request),
    /// 100 on cloud stores (at most about 10 PUTs per second per table)]
    #[arg(long, global = true, env = "BASALT_SEGMENT_AGE_MS")]
    segment_age_ms: Option<u64>,
    /// When ILP/HTTP answers 204. local: once the rows are durable in this
    /// node's WAL (an unplanned failover can lose the last ones, reported
    /// by the old primary). upload: once they are in the object store too,
    /// so a promoted replica has every acknowledged row; a commit then
    /// waits for a PUT (segments default to sealing as soon as the previous
    /// PUT landed, so concurrent commits share one: at most one PUT in
    /// flight per table). ILP/TCP has no acknowledgements either way.
    #[arg(long, global = true, env = "BASALT_ACK_AFTER", default_value = "local", value_parser = ["local", "upload"])]
    ack_after: String,
    /// Primary: segment body compression, none or lz4 (about 5x fewer bytes
    /// uploaded and stored for the reference table, at some CPU per row;
    /// none keeps the encode buffer as the upload body, with no copy).
    #[arg(long, global = true, env = "BASALT_SEGMENT_COMPRESSION", default_value = "none", value_parser = ["none", "lz4"])]
    segment_compression: String,
    /// Primary: tables uploading at once (one segment in flight per table).
    #[arg(
        long,
        global = true,
        env = "BASALT_UPLOADS_IN_FLIGHT_MAX",
        default_value_t = 4
    )]
    uploads_in_flight_max: usize,
    /// Primary: take a snapshot (QuestDB: backup) of every replicated table
    /// into the object store this often: `30m`, `6h`, `1d`, ... or `off`
    /// (only `BACKUP DATABASE` takes one). New replicas start from the
    /// newest snapshot; `basalt restore` starts from one (docs/backup.md).
    #[arg(
        long,
        global = true,
        env = "BASALT_SNAPSHOT_INTERVAL",
        default_value = "off"
    )]
    snapshot_interval: String,
    /// Primary: keep what restores any moment of this window (`7d`, `12h`,
    /// ...), delete older snapshots and the segments no kept snapshot needs;
    /// `off` keeps everything (the store grows forever).
    #[arg(long, global = true, env = "BASALT_RETENTION", default_value = "off")]
    retention: String,
    /// With --retention: keep at least this many snapshots, whatever their age.
    #[arg(
        long,
        global = true,
        env = "BASALT_RETENTION_SNAPSHOTS",
        default_value_t = 2
    )]
    retention_snapshots: usize,
    /// With --retention: nothing is deleted until it has been unneeded this
    /// long (a snapshot: a newer one has been complete that long), so a
    /// bootstrap or restore that started from it can finish. Longer than
    /// your slowest bootstrap.
    #[arg(
        long,
        global = true,
        env = "BASALT_RETENTION_GRACE",
        default_value = "1h"
    )]
    retention_grace: String,
    /// Replica: how often each table's next segment is looked for (one GET
    /// of the key it must have per table; new tables are listed once a
    /// second, each table's keys every 10 s to find gaps). [default by
    /// store: 5 on fs, 50 on cloud stores]
    #[arg(long, global = true, env = "BASALT_REPLICA_POLL_MS")]
    replica_poll_ms: Option<u64>,
}

impl ServeArgs {
    /// Snapshots and retention, from their options.
    fn backup(&self) -> Result<basalt::replication::node::BackupOptions, String> {
        use basalt::replication::snapshot::{parse_duration, Retention};
        let interval = parse_duration(&self.snapshot_interval)
            .map_err(|e| format!("--snapshot-interval: {e}"))?;
        if interval.is_some_and(|d| d < Duration::from_secs(1)) {
            return Err("--snapshot-interval must be at least 1s (or off)".into());
        }
        let window = parse_duration(&self.retention).map_err(|e| format!("--retention: {e}"))?;
        let grace = parse_duration(&self.retention_grace)
            .map_err(|e| format!("--retention-grace: {e}"))?
            .ok_or(
                "--retention-grace cannot be off: deleting what a bootstrap is reading loses it",
            )?;
        if window.is_some() && self.retention_snapshots == 0 {
            return Err("--retention-snapshots must be at least 1: the newest snapshot is what new nodes start from".into());
        }
        Ok(basalt::replication::node::BackupOptions {
            interval,
            retention: window.map(|window| Retention {
                window,
                keep_min: self.retention_snapshots,
                grace,
            }),
            ..Default::default()
        })
    }

    /// Users and TLS, from their options; refuses to serve non-loopback
    /// addresses without users unless told to.
    fn security(&self, config: &mut basalt::server::ServerConfig) -> Result<(), String> {
        use basalt::auth::{tls, Auth, Users};
        let inline = std::env::var("BASALT_USERS_TOML").ok();
        let users = match (&self.users, inline) {
            (Some(_), Some(_)) => {
                return Err(
                    "give users either as --users FILE or in BASALT_USERS_TOML, not both".into(),
                )
            }
            (Some(path), None) => Some(Users::load(path)?),
            (None, Some(text)) => Some(Users::parse(&text, "BASALT_USERS_TOML")?),
            (None, None) => None,
        };
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config.tls = Some(tls::Tls::load(&tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            })?);
        }
        let exposed: Vec<String> = [
            ("http", Some(config.http)),
            ("ilp", Some(config.ilp)),
            ("pg", config.pg),
        ]
        .into_iter()
        .filter_map(|(what, a)| {
            a.filter(|a| !a.ip().is_loopback())
                .map(|a| format!("--{what} {a}"))
        })
        .collect();
        match users {
            Some(u) => {
                if config.tls.is_none() && !exposed.is_empty() {
                    tracing::warn!(
                        addresses = exposed.join(", "),
                        "serving beyond loopback without TLS: passwords and tokens cross the network in clear (give --tls-cert and --tls-key)"
                    );
                }
                config.auth = Arc::new(Auth::new(u));
            }
            None if !exposed.is_empty() && !self.allow_unauthenticated => {
                return Err(format!(
                    "{} can be reached from beyond this machine, and no users are configured: anyone \
                     who reaches it could read, write and drop every table. Give --users FILE (docs/security.md; \
                     `basalt user password` makes an entry), bind to 127.0.0.1, or pass \
                     --allow-unauthenticated to serve it open on purpose",
                    exposed.join(", ")
                ));
            }
            None if !exposed.is_empty() => tracing::warn!(
                addresses = exposed.join(", "),
                "--allow-unauthenticated: serving beyond loopback with no users; anyone who reaches these ports may read and write every table"
            ),
            None => {}
        }
        Ok(())
    }

    fn config(&self) -> Result<basalt::server::ServerConfig, String> {
        let addr = |what: &str, s: &str| {
            use std::net::ToSocketAddrs;
            s.to_socket_addrs()
                .map_err(|e| format!("--{what} {s:?} is not a usable address: {e}"))?
                .next()
                .ok_or_else(|| format!("--{what} {s:?} resolves to no address"))
        };
        if self.partition_by == basalt::table::PartitionBy::None {
            return Err(
                "--partition-by NONE is only for tables without a designated timestamp; \
                 tables created by ILP have one (use HOUR, DAY, WEEK, MONTH or YEAR)"
                    .into(),
            );
        }
        if self.ilp_line_bytes_max < 1024 {
            return Err("--ilp-line-bytes-max must be at least 1024".into());
        }
        Ok(basalt::server::ServerConfig {
            http: addr("http", &self.http)?,
            ilp: addr("ilp", &self.ilp)?,
            partition_by: self.partition_by,
            http_request_bytes_max: self.http_request_bytes_max,
            ilp_line_bytes_max: self.ilp_line_bytes_max,
            ilp_commit_rows: self.ilp_commit_rows.max(1),
            ilp_commit_interval: Duration::from_millis(self.ilp_commit_interval_ms.max(1)),
            connections_max: self.connections_max.max(1),
            node: None,
            ack_after_upload: self.ack_after == "upload",
            ack_upload_timeout: Duration::from_secs(30),
            control: None,
            sql: true,
            pg: match self.pg.as_str() {
                "off" => None,
                pg => Some(addr("pg", pg)?),
            },
            auth: Arc::new(basalt::auth::Auth::off()),
            tls: None,
        })
    }
}

impl NodeArgs {
    fn open(&self) -> Result<Database, DbError> {
        let replica = self.role == "replica";
        Database::open(DbOptions {
            data_dir: self.data_dir.clone(),
            engine: self.io_engine.clone(),
            shards: self.shards,
            checkpoint_interval: Duration::from_millis(self.checkpoint_interval_ms.max(1)),
            apply_interval: Duration::from_millis(self.apply_interval_ms),
            // For the tables a replica gets when it becomes primary too.
            retain_wal_for_upload: self.object_store.as_deref() != Some("off"),
            upload_store_id: self.store().ok().flatten().map_or(0, |s| s.id()),
            read_only: replica,
            ..DbOptions::default()
        })
    }

    /// The store snapshots go to, when it is not the replication store.
    fn backup_store(&self) -> Result<Option<basalt::store::Store>, String> {
        let Some(conn) = &self.backup_object_store else {
            return Ok(None);
        };
        basalt::store::StoreConfig::parse(conn)
            .map_err(|e| format!("--backup-object-store: {e}"))?
            .build()
            .map(Some)
            .map_err(|e| format!("--backup-object-store: {e}"))
    }

    /// The object store to replicate through; `None` when `off`.
    fn store(&self) -> Result<Option<basalt::store::StoreConfig>, String> {
        let conn = match self.object_store.as_deref() {
            Some("off") if self.role == "replica" => return Err(
                "a replica follows an object store: --role replica needs --object-store, not off"
                    .into(),
            ),
            Some("off") => return Ok(None),
            Some(c) => c.to_string(),
            None if self.role == "replica" => {
                return Err(
                    "a replica needs --object-store: the store its primary uploads to".into(),
                )
            }
            None => format!("fs::root={};", self.data_dir.join("_replication").display()),
        };
        basalt::store::StoreConfig::parse(&conn)
            .map(Some)
            .map_err(|e| format!("--object-store: {e}"))
    }
}

#[derive(Subcommand)]
enum UserCommand {
    /// Reads a password (one line on standard input) and prints its
    /// SCRAM-SHA-256 verifier for `password = ...`: what HTTP basic logins
    /// and PostgreSQL's SCRAM are checked against.
    Password {
        /// Also print PostgreSQL's md5 form (`password_md5`) for drivers that
        /// speak only md5; it depends on the user's name.
        #[arg(long, value_name = "USER")]
        md5_for: Option<String>,
    },
    /// Prints a new random bearer token (the clients' `token=`) and its
    /// digest for `tokens = [...]`.
    Token,
    /// Prints a new ILP/TCP key pair: the client's `token`, `token_x` and
    /// `token_y`, and the users-file lines for the public half.
    IlpKey,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node: ILP over HTTP and TCP served by the pinned shards, until
    /// SIGTERM or SIGINT (then requests in flight finish, everything
    /// acknowledged is durable, and applied data is checkpointed).
    Serve,
    /// Create the reference table `cpu` (if missing), ingest generated rows
    /// through the WAL, and print a scan of what landed.
    Demo {
        /// Rows to ingest.
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// Rows per commit (one txn each).
        #[arg(long, default_value_t = 10_000)]
        batch_rows: usize,
        /// Concurrent committer threads.
        #[arg(long, default_value_t = 4)]
        committers: usize,
    },
    /// Print rows of a table as tab-separated text.
    Scan {
        /// Table to read.
        table: String,
        /// Columns to print, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        columns: Vec<String>,
        /// Only rows with designated timestamp >= this (µs since epoch).
        #[arg(long)]
        from_us: Option<i64>,
        /// Only rows with designated timestamp < this (µs since epoch).
        #[arg(long)]
        to_us: Option<i64>,
        /// Print at most this many rows.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// List tables with their committed txn, partitions and row counts.
    Tables,
    /// Ingest InfluxDB Line Protocol from a file (or `-` for stdin): tables
    /// and columns are created on first use; the whole input is one request
    /// (a bad line commits nothing and names the line).
    Ingest {
        /// File of ILP lines, or `-` for standard input.
        file: PathBuf,
        /// Unit of the trailing timestamps: n, u, ms or s.
        #[arg(long, default_value = "n")]
        precision: String,
        /// Partition scheme of tables created by this input.
        #[arg(long, default_value = "DAY")]
        partition_by: basalt::table::PartitionBy,
    },
    /// Check a segment file (what replication uploads): prints its header,
    /// txn range, columns with their sizes and every checksum. Exits non-zero
    /// naming exactly what is wrong with a damaged or foreign file.
    Inspect {
        /// Segment file.
        file: PathBuf,
    },
    /// Build a data directory from the object store as it was at a point in
    /// time: the newest snapshot at or before it, then the segments after
    /// it up to the point (every txn committed at or before it, nothing
    /// after). Without --to-time or --to-txn: everything the store holds.
    /// Every object is verified; a killed restore resumes when run again
    /// with the same arguments. Serve the result with `basalt serve`
    /// (docs/backup.md says how it may rejoin the store).
    Restore {
        /// Restore to this moment: RFC 3339 (`2026-12-03T10:15:00Z`) or µs
        /// since the Unix epoch. Commit time on the primary.
        #[arg(long)]
        to_time: Option<String>,
        /// Restore TABLE to txn N (repeatable); other tables to --to-time,
        /// or to everything the store holds.
        #[arg(long, value_name = "TABLE=N")]
        to_txn: Vec<String>,
    },
    /// List the snapshots in the object store and the range of moments it
    /// can restore.
    Backups,
    /// Make the entries of a users file (--users; docs/security.md). Secrets
    /// are printed once here and stored only hashed.
    User {
        #[command(subcommand)]
        what: UserCommand,
    },
    /// Test support: ingest acknowledged batches forever, printing `ack <id>`
    /// after each durable commit (the crash test kills it with SIGKILL).
    #[command(hide = true)]
    CrashChild {
        #[arg(long, default_value_t = 0)]
        first_batch: u64,
        #[arg(long, default_value_t = 100)]
        batch_rows: usize,
        #[arg(long, default_value_t = 4)]
        committers: usize,
    },
}

/// How log lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logs(format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BASALT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logs.json().with_ansi(false).init(),
        // Colour only for a person at a terminal: escape codes in a
        // redirected log (a file, journald, a log shipper) are noise.
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

fn main() -> ExitCode {
    // The options come first: they say how to log (nothing logs before).
    let cli = match parse_cli() {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    init_logs(cli.node.log_format);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(&cli.node, &cli.serve),
        Command::Demo {
            rows,
            batch_rows,
            committers,
        } => demo(&cli.node, rows, batch_rows.max(1), committers.max(1)).map_err(|e| e.to_string()),
        Command::Scan {
            table,
            columns,
            from_us,
            to_us,
            limit,
        } => scan(&cli.node, &table, &columns, from_us, to_us, limit).map_err(|e| e.to_string()),
        Command::Tables => tables(&cli.node).map_err(|e| e.to_string()),
        Command::Inspect { file } => inspect(&file),
        Command::Restore { to_time, to_txn } => {
            restore::restore(&cli.node, to_time.as_deref(), &to_txn)
        }
        Command::Backups => restore::backups(&cli.node),
        Command::Ingest {
            file,
            precision,
            partition_by,
        } => ingest(&cli.node, &file, &precision, partition_by),
        Command::User { what } => user(what),
        Command::CrashChild {
            first_batch,
            batch_rows,
            committers,
        } => crash_child(&cli.node, first_batch, batch_rows, committers).map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("basalt: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Option names a config file may set: every global option but `config`.
const CONFIG_KEYS: &[&str] = &[
    "data_dir",
    "log_format",
    "io_engine",
    "shards",
    "checkpoint_interval_ms",
    "apply_interval_ms",
    "http",
    "ilp",
    "pg",
    "partition_by",
    "http_request_bytes_max",
    "ilp_line_bytes_max",
    "ilp_commit_rows",
    "ilp_commit_interval_ms",
    "connections_max",
    "object_store",
    "role",
    "segment_bytes_max",
    "segment_age_ms",
    "ack_after",
    "uploads_in_flight_max",
    "segment_compression",
    "replica_poll_ms",
    "snapshot_interval",
    "backup_object_store",
    "retention",
    "retention_snapshots",
    "retention_grace",
    "users",
    "allow_unauthenticated",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
];

/// Parses the command line, then fills options given neither as flags nor
/// in the environment from the `--config` file.
fn parse_cli() -> Result<Cli, clap::Error> {
    use clap::parser::ValueSource;
    use clap::{CommandFactory, FromArgMatches};
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut cmd = Cli::command();
    let matches = cmd.try_get_matches_from_mut(&argv)?;
    let Some(path) = matches.get_one::<PathBuf>("config").cloned() else {
        return Cli::from_arg_matches(&matches);
    };
    let bad = |msg: String| cmd.clone().error(clap::error::ErrorKind::InvalidValue, msg);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| bad(format!("cannot read config file {}: {e}", path.display())))?;
    let table: toml::Table = text.parse().map_err(|e| {
        bad(format!(
            "config file {} is not valid TOML: {e}",
            path.display()
        ))
    })?;
    let mut extra: Vec<std::ffi::OsString> = Vec::new();
    for (key, value) in &table {
        if !CONFIG_KEYS.contains(&key.as_str()) {
            return Err(bad(format!(
                "unknown key {key:?} in config file {} (known keys: {})",
                path.display(),
                CONFIG_KEYS.join(", ")
            )));
        }
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(bad(format!(
                    "key {key:?} in config file {} must be a string or an integer, not {}",
                    path.display(),
                    other.type_str()
                )))
            }
        };
        let from_file = !matches!(
            matches.value_source(key),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if from_file {
            extra.push(format!("--{}={text}", key.replace('_', "-")).into());
        }
    }
    let all: Vec<std::ffi::OsString> = argv.into_iter().chain(extra).collect();
    let matches = Cli::command().try_get_matches_from(&all).map_err(|e| {
        let detail = e.to_string();
        let detail = detail
            .trim_start_matches("error: ")
            .lines()
            .next()
            .unwrap_or("");
        bad(format!("in config file {}: {detail}", path.display()))
    })?;
    Cli::from_arg_matches(&matches)
}

fn serve(node: &NodeArgs, args: &ServeArgs) -> Result<(), String> {
    use basalt::replication::{
        Node, NodeConfig, NodeStatus, ReplicaOptions, Role, RoleState, UploadOptions,
    };
    let mut config = args.config()?;
    args.security(&mut config)?;
    let store_config = node.store()?;
    let role = if node.role == "replica" {
        Role::Replica
    } else {
        Role::Primary
    };
    if args.segment_bytes_max.is_some_and(|b| b < 1024) {
        return Err("--segment-bytes-max must be at least 1024".into());
    }
    let mut backup = args.backup()?;
    backup.store = node.backup_store()?;
    if store_config.is_none() && backup.store.is_some() {
        return Err("--backup-object-store needs --object-store: snapshots name txns of the replication store's history".into());
    }
    let marker = node
        .data_dir
        .join(basalt::replication::restore::MARKER_FILE);
    if marker.exists() {
        return Err(format!(
            "{} holds an unfinished restore ({} exists): run the same `basalt restore` again to \
             finish it, or remove the directory",
            node.data_dir.display(),
            marker.display()
        ));
    }
    if store_config.is_none() && (backup.interval.is_some() || backup.retention.is_some()) {
        return Err(
            "--snapshot-interval and --retention need an object store (--object-store is off)"
                .into(),
        );
    }
    // SIGTERM and SIGINT are taken by this thread only (sigwait below): block
    // them before any other thread starts, so every thread inherits the mask.
    let signals = block_shutdown_signals();
    let db = node.open().map_err(|e| e.to_string())?;
    // Held until the replication threads are joined below: the database
    // closes first, and a replica's follower still writes tables after.
    let dir_lock = db.dir_lock();
    let shards = db.shard_count();
    let engine = db.engine().choice.clone();
    let mut control = None;
    match &store_config {
        None if config.ack_after_upload => {
            return Err("--ack-after upload needs an object store (--object-store is off)".into())
        }
        None => {
            // No replication: a standalone primary.
            config.node = Some(Arc::new(NodeStatus::new(
                "off".into(),
                Default::default(),
                Some(db.catalog()),
                {
                    let mut s = RoleState::new(Role::Primary);
                    s.writable = true;
                    s
                },
            )));
        }
        Some(sc) => {
            let store = sc.build().map_err(|e| format!("--object-store: {e}"))?;
            let status = Arc::new(NodeStatus::new(
                sc.to_string(),
                store.stats.clone(),
                Some(db.catalog()),
                RoleState::new(role),
            ));
            let defaults = UploadOptions::for_store(sc.kind);
            let upload = UploadOptions {
                segment_bytes_max: args.segment_bytes_max.unwrap_or(defaults.segment_bytes_max),
                segment_age_max: match args.segment_age_ms {
                    Some(ms) => Duration::from_millis(ms),
                    // Commits wait for the PUT: seal as soon as the last one
                    // landed (the PUT rate is bounded by its latency).
                    None if config.ack_after_upload => Duration::ZERO,
                    None => defaults.segment_age_max,
                },
                // Commits wait for it: not background work then.
                background: !config.ack_after_upload,
                uploads_in_flight_max: args.uploads_in_flight_max.max(1),
                compression: if args.segment_compression == "lz4" {
                    basalt::segment::Compression::Lz4
                } else {
                    basalt::segment::Compression::None
                },
                ..defaults
            };
            let defaults = ReplicaOptions::for_store(sc.kind);
            let replica = ReplicaOptions {
                poll_interval: args.replica_poll_ms.map_or(defaults.poll_interval, |ms| {
                    Duration::from_millis(ms.max(1))
                }),
                // Apply on a pinned core, like a primary's shards.
                core: Some(shards.saturating_sub(1)),
                snapshots: backup.store.clone(),
                ..defaults
            };
            let n = Node::new(
                NodeConfig {
                    data_dir: node.data_dir.clone(),
                    store,
                    upload,
                    replica,
                    node_name: basalt::replication::node::default_node_name(&node.data_dir),
                    backup: backup.clone(),
                },
                status.clone(),
            );
            if role == Role::Primary {
                // Until ownership is confirmed.
                db.refuse_writes("the node is starting");
            }
            config.node = Some(status);
            config.control = Some(Arc::new(n.clone()));
            control = Some(n);
        }
    }
    let server = basalt::server::Server::start(db, config).map_err(|e| e.to_string())?;
    if let Some(n) = &control {
        n.attach(server.database_weak());
        let started = match role {
            Role::Primary => n.start_primary(),
            Role::Replica => n.start_replica(),
        };
        if let Err(e) = started {
            server.shutdown(Duration::from_secs(5));
            n.shutdown();
            return Err(e);
        }
    }
    // A machine-readable line for scripts and tests (logs go to stderr).
    println!(
        "basalt serving: http={} ilp={} shards={shards} engine={engine} data_dir={} role={} store={} pg={}",
        server.http_addr,
        server.ilp_addr,
        node.data_dir.display(),
        role.name(),
        store_config.map_or_else(|| "off".to_string(), |s| s.to_string()),
        server.pg_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
    );
    let _ = std::io::stdout().flush();
    let signal = wait_for_signal(&signals);
    tracing::info!(signal, "shutting down");
    // The database closes first, so the uploader's last round ships every
    // committed txn (within its flush limit; the rest stays in the WAL).
    server.shutdown(Duration::from_secs(30));
    if let Some(n) = control {
        n.shutdown();
    }
    drop(dir_lock);
    Ok(())
}

fn user(what: UserCommand) -> Result<(), String> {
    use basalt::auth;
    match what {
        UserCommand::Password { md5_for } => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
            let password = line.strip_suffix('\n').unwrap_or(&line);
            let password = password.strip_suffix('\r').unwrap_or(password);
            if password.is_empty() {
                return Err("the password is empty (give it as one line on standard input)".into());
            }
            println!(
                "password = \"{}\"",
                auth::ScramVerifier::new(password).encode()
            );
            if let Some(name) = md5_for {
                println!(
                    "password_md5 = \"md5{:x}\"",
                    md5::compute(format!("{password}{name}"))
                );
            }
        }
        UserCommand::Token => {
            let t = auth::new_token();
            println!("# the client's setting (keep it secret): token={t}");
            println!("tokens = [\"{}\"]", auth::token_digest_text(&t));
        }
        UserCommand::IlpKey => {
            let (d, x, y) = auth::new_ilp_key();
            println!(
                "# the client's settings (keep token secret): token={d};token_x={x};token_y={y};"
            );
            println!("ilp_key_x = \"{x}\"");
            println!("ilp_key_y = \"{y}\"");
        }
    }
    Ok(())
}

fn block_shutdown_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-set calls on a local, initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> &'static str {
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` holds blocked signals; sigwait writes the one taken.
    let rc = unsafe { libc::sigwait(set, &mut sig) };
    match (rc, sig) {
        (0, libc::SIGTERM) => "SIGTERM",
        (0, libc::SIGINT) => "SIGINT",
        _ => "unknown",
    }
}

fn open_cpu(db: &Database) -> Result<Arc<basalt::db::TableHandle>, DbError> {
    match db.table("cpu") {
        Some(t) => Ok(t),
        None => db.create_table("cpu", CpuGenerator::default().schema()),
    }
}

fn demo(node: &NodeArgs, rows: u64, batch_rows: usize, committers: usize) -> Result<(), DbError> {
    let db = node.open()?;
    let table = open_cpu(&db)?;
    let first = db.reader("cpu")?.state()?.row_count();
    let gen = CpuGenerator::default();
    let next = AtomicU64::new(0);
    let last_txn = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|s| -> Result<(), DbError> {
        let workers: Vec<_> = (0..committers)
            .map(|_| {
                s.spawn(|| -> Result<(), DbError> {
                    loop {
                        let at = next.fetch_add(batch_rows as u64, Ordering::Relaxed);
                        if at >= rows {
                            return Ok(());
                        }
                        let n = batch_rows.min((rows - at) as usize);
                        let txn = db.commit(&table, gen.batch(first + at, n, 0))?;
                        last_txn.fetch_max(txn, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("committer thread panicked")?;
        }
        Ok(())
    })?;
    let durable = started.elapsed();
    table.wait_applied(last_txn.load(Ordering::Relaxed), Duration::from_secs(600))?;
    let applied = started.elapsed();
    println!(
        "ingested {rows} rows of cpu in {} txns through the WAL ({} engine, {} shards): durable in {:.2?} ({:.0} rows/s), applied in {:.2?}",
        rows.div_ceil(batch_rows as u64),
        db.engine().choice,
        db.shard_count(),
        durable,
        rows as f64 / durable.as_secs_f64(),
        applied,
    );
    let result = db.scan("cpu", &[], None)?;
    print_summary(&result, 5);
    let day = db.scan(
        "cpu",
        &["host", "usage_user", "ts"],
        Some(BASE_TS_US..BASE_TS_US + 1_000),
    )?;
    println!(
        "rows in the first millisecond of 2024-01-01 (time-range scan): {}",
        day.row_count()
    );
    db.close();
    Ok(())
}

fn scan(
    node: &NodeArgs,
    table: &str,
    columns: &[String],
    from_us: Option<i64>,
    to_us: Option<i64>,
    limit: usize,
) -> Result<(), DbError> {
    let reader = basalt::table::TableReader::open(&node.data_dir, table)?;
    let cols: Vec<&str> = columns.iter().map(String::as_str).collect();
    let range = match (from_us, to_us) {
        (None, None) => None,
        (f, t) => Some(f.unwrap_or(i64::MIN)..t.unwrap_or(i64::MAX)),
    };
    let result = reader.scan(&cols, range)?;
    print_rows(&result, 0..result.row_count().min(limit));
    println!("({} rows at txn {})", result.row_count(), result.txn);
    Ok(())
}

fn ingest(
    node: &NodeArgs,
    file: &std::path::Path,
    precision: &str,
    partition_by: basalt::table::PartitionBy,
) -> Result<(), String> {
    use std::io::Read;
    let precision = basalt::ilp::Precision::from_param(precision)
        .ok_or_else(|| format!("unknown precision {precision:?} (expected n, u, ms or s)"))?;
    let mut body = Vec::new();
    if file == std::path::Path::new("-") {
        std::io::stdin()
            .read_to_end(&mut body)
            .map_err(|e| format!("reading stdin: {e}"))?;
    } else {
        body = std::fs::read(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    }
    let db = node.open().map_err(|e| e.to_string())?;
    let opts = basalt::ingest::IngestOptions {
        precision,
        partition_by,
    };
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let report = basalt::ingest::Ingestor::new(&db, opts)
        .ingest(&body, now_us)
        .map_err(|e| e.to_string())?;
    for (table, rows, txn) in &report.tables {
        println!("{table}: {rows} rows committed as txn {txn}");
        if let Some(t) = db.table(table) {
            t.wait_applied(*txn, Duration::from_secs(600))
                .map_err(|e| e.to_string())?;
        }
    }
    println!("{} lines ingested", report.lines);
    db.close();
    Ok(())
}

fn inspect(file: &std::path::Path) -> Result<(), String> {
    use basalt::segment::{Segment, SegmentError};
    let bytes = std::fs::read(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    let seg = match Segment::from_slice(&bytes) {
        Ok(s) => s,
        Err(e) => {
            // Say which blocks are damaged when the archive still parses.
            if let SegmentError::ChecksumMismatch { part, .. } = &e {
                if part == "body" {
                    for b in basalt::segment::diagnose_body(&bytes) {
                        eprintln!(
                            "damaged block: txn {} column {} ({} bytes)",
                            b.txn, b.column, b.bytes
                        );
                    }
                }
            }
            return Err(format!("{}: {e}", file.display()));
        }
    };
    let p = *seg.preamble();
    let h = seg.header();
    println!(
        "segment {}: {} bytes, format version {}, compression {:?}",
        file.display(),
        seg.len(),
        p.version,
        p.compression
    );
    println!(
        "checksums: preamble ok, header ok ({:016x}), body ok ({:016x})",
        p.header_xxh3, p.body_xxh3
    );
    println!(
        "table {} (id {:016x}), schema version {}",
        h.table, h.table_id, h.schema_version
    );
    match h.prev_xxh3 {
        Some(prev) => println!(
            "chain: epoch {}, links to previous segment {prev:016x}{}, own checksum {:016x}",
            h.epoch,
            if prev == 0 { " (none: first)" } else { "" },
            seg.checksum()
        ),
        None => println!(
            "chain: format version 1 has no epoch or link; own checksum {:016x}",
            seg.checksum()
        ),
    }
    println!(
        "txns {}..={} ({} txns), {} rows",
        h.first_txn,
        h.last_txn,
        h.commit_times_us.len(),
        h.row_count
    );
    let ts = |us: i64| {
        chrono::DateTime::from_timestamp_micros(us).map_or(us.to_string(), |t| {
            t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
        })
    };
    if h.row_count > 0 {
        println!("timestamps {} .. {}", ts(h.min_ts_us), ts(h.max_ts_us));
    }
    if let (Some(first), Some(last)) = (h.commit_times_us.first(), h.commit_times_us.last()) {
        println!("committed {} .. {}", ts(*first), ts(*last));
    }
    println!(
        "header {} bytes, body {} bytes stored, {} bytes raw",
        p.header_len, p.body_len, p.body_raw_len
    );
    let checks = seg.check_blocks();
    println!("column\ttype\tadded_in\tbytes\tblocks");
    for (i, c) in h.columns.iter().enumerate() {
        let mine: Vec<_> = checks.iter().filter(|b| b.column == c.name).collect();
        let bytes: usize = mine.iter().map(|b| b.bytes).sum();
        let ty = basalt::table::ColumnType::from_tag(c.ty)
            .map_or_else(|| format!("?{}", c.ty), |t| t.to_string());
        let designated = if i == h.timestamp_column as usize {
            " (designated)"
        } else {
            ""
        };
        println!(
            "{}{designated}\t{ty}\t{}\t{bytes}\t{}",
            c.name,
            c.added_in,
            mine.len()
        );
    }
    let bad: Vec<_> = checks.iter().filter(|b| !b.ok).collect();
    if !bad.is_empty() {
        for b in &bad {
            eprintln!("damaged block: txn {} column {}", b.txn, b.column);
        }
        return Err(format!(
            "{}: {} column blocks fail their xxh3",
            file.display(),
            bad.len()
        ));
    }
    println!("all {} column blocks verified", checks.len());
    Ok(())
}

fn tables(node: &NodeArgs) -> Result<(), DbError> {
    let entries = std::fs::read_dir(&node.data_dir).map_err(TableError::io(&node.data_dir))?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().join(basalt::table::files::META_FILE).is_file())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    println!("table\ttxn\tpartitions\trows\treplication");
    for n in names {
        let r = basalt::table::TableReader::open(&node.data_dir, &n)?;
        let s = r.state()?;
        println!(
            "{n}\t{}\t{}\t{}\t{}",
            s.txn,
            s.partitions.len(),
            s.row_count(),
            if r.schema().is_local_only() {
                "local-only"
            } else {
                "replicated"
            }
        );
    }
    Ok(())
}

fn format_value(v: Value<'_>) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Boolean(b) => b.to_string(),
        Value::Byte(x) => x.to_string(),
        Value::Short(x) => x.to_string(),
        Value::Int(x) => x.to_string(),
        Value::Long(x) => x.to_string(),
        Value::Float(x) => x.to_string(),
        Value::Double(x) => x.to_string(),
        Value::Timestamp(us) => chrono::DateTime::from_timestamp_micros(us)
            .map_or(us.to_string(), |t| {
                t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
            }),
        Value::Symbol(s) | Value::Varchar(s) => s.to_string(),
    }
}

fn print_rows(r: &ScanResult, rows: std::ops::Range<usize>) {
    println!("{}", r.names.join("\t"));
    print_values(r, rows);
}

fn print_values(r: &ScanResult, rows: std::ops::Range<usize>) {
    for row in rows {
        let line: Vec<String> = (0..r.columns.len())
            .map(|c| format_value(r.value(c, row)))
            .collect();
        println!("{}", line.join("\t"));
    }
}

fn print_summary(r: &ScanResult, n: usize) {
    let total = r.row_count();
    println!(
        "scan of cpu at txn {}: {total} rows; first and last {n}:",
        r.txn
    );
    print_rows(r, 0..total.min(n));
    if total > n {
        println!("...");
        print_values(r, total.saturating_sub(n).max(n)..total);
    }
}

/// Commits batches of `batch_rows` rows; batch `b` holds rows with
/// `requests = b * batch_rows + j`. Timestamps spread over three days and
/// arrive out of order across committers, so O3 merges happen too.
fn crash_child(
    node: &NodeArgs,
    first_batch: u64,
    batch_rows: usize,
    committers: usize,
) -> Result<(), DbError> {
    let db = node.open()?;
    let table = open_cpu(&db)?;
    let gen = CpuGenerator::default();
    let next = AtomicU64::new(first_batch);
    let out = Mutex::new(std::io::stdout());
    std::thread::scope(|s| {
        for _ in 0..committers {
            s.spawn(|| loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                let mut builder = basalt::batch::BatchBuilder::new(gen.schema());
                for j in 0..batch_rows as u64 {
                    let i = b * batch_rows as u64 + j;
                    let day = (b % 3) as i64 * 86_400_000_000;
                    gen.row(&mut builder, i, BASE_TS_US + day + i as i64);
                }
                match db.commit(&table, builder.finish()) {
                    Ok(_) => {
                        let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                        let _ = writeln!(o, "ack {b}");
                        let _ = o.flush();
                    }
                    Err(e) => {
                        eprintln!("commit of batch {b} failed: {e}");
                        std::process::exit(3);
                    }
                }
            });
        }
    });
    Ok(())
}

/// `basalt restore` and `basalt backups`.
mod restore {
    use std::io::IsTerminal;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use basalt::replication::restore::{self as r, fmt_time, Target};
    use basalt::replication::snapshot::Progress;

    use super::NodeArgs;

    fn store(node: &NodeArgs) -> Result<basalt::store::Store, String> {
        if node.object_store.is_none() {
            return Err("--object-store is required: the store to restore from".into());
        }
        node.store()?
            .ok_or("--object-store off: there is nothing to restore from")?
            .build()
            .map_err(|e| e.to_string())
    }

    pub fn restore(
        node: &NodeArgs,
        to_time: Option<&str>,
        to_txn: &[String],
    ) -> Result<(), String> {
        let mut target = Target {
            time_us: to_time.map(r::parse_time).transpose()?,
            ..Default::default()
        };
        for t in to_txn {
            let (table, n) = r::parse_txn(t)?;
            target.txns.insert(table, n);
        }
        let store = store(node)?;
        let snapshots = node.backup_store()?.unwrap_or_else(|| store.clone());
        let progress = Arc::new(Progress::default());
        let total = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let shown = {
            let (p, t, d) = (progress.clone(), total.clone(), done.clone());
            std::thread::spawn(move || show_progress(&p, &t, &d))
        };
        let started = Instant::now();
        let res = r::restore(
            &store,
            &snapshots,
            &node.data_dir,
            &target,
            &progress,
            &total,
        );
        done.store(true, Ordering::Release);
        let _ = shown.join();
        let rep = res?;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "restored {} into {} from {} in {secs:.1} s: {} objects, {:.1} MB ({:.1} MB/s)",
            if target == Target::default() {
                "latest".to_string()
            } else {
                format!("{target:?}")
            },
            node.data_dir.display(),
            rep.snapshot.map_or_else(
                || "the segments alone".to_string(),
                |s| format!("snapshot {s} and the segments after it")
            ),
            rep.objects,
            rep.bytes as f64 / 1e6,
            rep.bytes as f64 / 1e6 / secs.max(1e-9),
        );
        for (t, txn) in &rep.tables {
            println!("  {t}: txn {txn}");
        }
        Ok(())
    }

    /// A progress bar on a terminal, a log line every 2 s otherwise.
    fn show_progress(p: &Progress, total: &AtomicU64, done: &AtomicBool) {
        let tty = std::io::stderr().is_terminal();
        let started = Instant::now();
        let mut last_log = Instant::now();
        while !done.load(Ordering::Acquire) {
            std::thread::park_timeout(Duration::from_millis(200));
            let bytes = p.bytes.load(Ordering::Relaxed);
            let objects = p.objects.load(Ordering::Relaxed);
            let total = total.load(Ordering::Relaxed).max(bytes);
            let secs = started.elapsed().as_secs_f64();
            let rate = bytes as f64 / secs.max(1e-3);
            let eta = if rate > 0.0 && total > 0 {
                format!("{:.0} s", (total - bytes) as f64 / rate)
            } else {
                "?".into()
            };
            let pct = if total > 0 {
                bytes as f64 * 100.0 / total as f64
            } else {
                0.0
            };
            if tty {
                let width = 30;
                let filled = (pct / 100.0 * width as f64) as usize;
                eprint!(
                    "\r[{}{}] {pct:5.1}% {:.1}/{:.1} MB, {objects} objects, {:.1} MB/s, ETA {eta}   ",
                    "#".repeat(filled.min(width)),
                    " ".repeat(width - filled.min(width)),
                    bytes as f64 / 1e6,
                    total as f64 / 1e6,
                    rate / 1e6
                );
            } else if last_log.elapsed() >= Duration::from_secs(2) {
                last_log = Instant::now();
                tracing::info!(
                    bytes,
                    total_bytes = total,
                    objects,
                    mb_per_s = format!("{:.1}", rate / 1e6),
                    eta = %eta,
                    "restore progress"
                );
            }
        }
        if tty {
            eprintln!();
        }
    }

    pub fn backups(node: &NodeArgs) -> Result<(), String> {
        let store = store(node)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let snapshots = node.backup_store()?.unwrap_or_else(|| store.clone());
        let s = rt.block_on(r::summary(&store, &snapshots))?;
        println!("store {}", store.config);
        if snapshots.config != store.config {
            println!("snapshots in {}", snapshots.config);
        }
        if s.snapshots.is_empty() {
            println!("no snapshots (BACKUP DATABASE or --snapshot-interval takes them)");
        }
        for m in &s.snapshots {
            println!(
                "snapshot {:>6}  cut {}  completed {}  epoch {}  tables {}  {:.1} MB  {}",
                m.seq,
                fmt_time(m.cut_us),
                fmt_time(m.completed_us),
                m.epoch,
                m.tables.len(),
                m.bytes() as f64 / 1e6,
                m.tables
                    .iter()
                    .map(|t| format!("{}@{}", t.name, t.txn))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        for (t, c) in &s.chains {
            println!(
                "table {t}: segments hold txns {}..={} ({} segments, newest commit {})",
                c.first_txn,
                c.last_txn,
                c.segments.len(),
                fmt_time(c.last_commit_us)
            );
        }
        println!("{}", s.range_text());
        Ok(())
    }
}
