//! Object stores from one connection string, in the spirit of QuestDB's
//! `replication.object.store`:
//!
//! ```text
//! s3::bucket=B;root=R;region=..;endpoint=..;access_key_id=..;secret_access_key=..;allow_http=..;
//! azblob::container=C;root=R;account_name=..;account_key=..;endpoint=..;use_emulator=..;
//! gcs::bucket=B;root=R;credential_path=..;
//! fs::root=DIR;
//! memory::
//! ```
//!
//! Built on the `object_store` crate. Unknown keys, missing required keys
//! and bad values are errors naming the key. Credentials not given in the
//! string come from the environment (`AWS_*`, `AZURE_*`, `GOOGLE_*`, as the
//! object_store builders read them). Secrets are never printed: `Display`
//! of a [`StoreConfig`] masks them.
//!
//! GCS is built and parsed, but untested against a server: no emulator
//! available here speaks the XML API object_store uses.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;

pub mod fault;
pub mod metered;

pub use fault::{FaultControl, FaultyStore};
pub use metered::{OpCounts, StoreStats};

/// Which backend a connection string names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    S3,
    Azure,
    Gcs,
    Fs,
    Memory,
}

impl StoreKind {
    fn name(self) -> &'static str {
        match self {
            StoreKind::S3 => "s3",
            StoreKind::Azure => "azblob",
            StoreKind::Gcs => "gcs",
            StoreKind::Fs => "fs",
            StoreKind::Memory => "memory",
        }
    }

    /// (key, required, secret) for each key the transport accepts.
    fn keys(self) -> &'static [(&'static str, bool, bool)] {
        match self {
            StoreKind::S3 => &[
                ("bucket", true, false),
                ("root", false, false),
                ("region", false, false),
                ("endpoint", false, false),
                ("access_key_id", false, false),
                ("secret_access_key", false, true),
                ("session_token", false, true),
                ("allow_http", false, false),
            ],
            StoreKind::Azure => &[
                ("container", true, false),
                ("root", false, false),
                ("account_name", false, false),
                ("account_key", false, true),
                ("endpoint", false, false),
                ("use_emulator", false, false),
            ],
            StoreKind::Gcs => &[
                ("bucket", true, false),
                ("root", false, false),
                ("credential_path", false, false),
            ],
            StoreKind::Fs => &[("root", true, false)],
            StoreKind::Memory => &[],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object store connection string {0:?} does not start with a transport (s3::, azblob::, gcs::, fs:: or memory::)")]
    NoTransport(String),
    #[error("unknown object store transport {0:?} (expected s3, azblob, gcs, fs or memory)")]
    UnknownTransport(String),
    #[error("{transport}:: has no key {key:?} (it takes: {known})")]
    UnknownKey {
        transport: &'static str,
        key: String,
        known: String,
    },
    #[error("{transport}:: needs {key}=...")]
    MissingKey {
        transport: &'static str,
        key: &'static str,
    },
    #[error("{transport}:: key {key} is given twice")]
    DuplicateKey {
        transport: &'static str,
        key: String,
    },
    #[error("{transport}:: part {part:?} is not key=value")]
    Malformed {
        transport: &'static str,
        part: String,
    },
    #[error("{transport}:: {key} must be true or false, not {value:?}")]
    BadBool {
        transport: &'static str,
        key: &'static str,
        value: String,
    },
    #[error("cannot open the {transport} object store: {source}")]
    Build {
        transport: &'static str,
        #[source]
        source: object_store::Error,
    },
}

/// A parsed connection string.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub kind: StoreKind,
    params: BTreeMap<String, String>,
}

impl fmt::Display for StoreConfig {
    /// The connection string with secrets masked.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}::", self.kind.name())?;
        for (k, v) in &self.params {
            let secret = self
                .kind
                .keys()
                .iter()
                .any(|(name, _, secret)| *name == k && *secret);
            if secret {
                write!(f, "{k}=****;")?;
            } else {
                write!(f, "{k}={v};")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreConfig({self})")
    }
}

impl StoreConfig {
    /// Parses `transport::key=value;key=value;` (the last `;` optional).
    pub fn parse(conn: &str) -> Result<StoreConfig, StoreError> {
        let (transport, rest) = conn
            .split_once("::")
            .ok_or_else(|| StoreError::NoTransport(conn.to_string()))?;
        let kind = match transport.trim() {
            "s3" => StoreKind::S3,
            "azblob" => StoreKind::Azure,
            "gcs" => StoreKind::Gcs,
            "fs" => StoreKind::Fs,
            "memory" => StoreKind::Memory,
            other => return Err(StoreError::UnknownTransport(other.to_string())),
        };
        let t = kind.name();
        let mut params = BTreeMap::new();
        for part in rest.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| StoreError::Malformed {
                transport: t,
                part: part.to_string(),
            })?;
            let k = k.trim();
            if !kind.keys().iter().any(|(name, _, _)| *name == k) {
                return Err(StoreError::UnknownKey {
                    transport: t,
                    key: k.to_string(),
                    known: kind
                        .keys()
                        .iter()
                        .map(|(n, _, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            if params.insert(k.to_string(), v.trim().to_string()).is_some() {
                return Err(StoreError::DuplicateKey {
                    transport: t,
                    key: k.to_string(),
                });
            }
        }
        for (key, required, _) in kind.keys() {
            if *required && params.get(*key).is_none_or(|v| v.is_empty()) {
                return Err(StoreError::MissingKey { transport: t, key });
            }
        }
        let cfg = StoreConfig { kind, params };
        for key in ["allow_http", "use_emulator"] {
            cfg.flag(key)?;
        }
        Ok(cfg)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    fn flag(&self, key: &'static str) -> Result<Option<bool>, StoreError> {
        match self.get(key) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(v) => Err(StoreError::BadBool {
                transport: self.kind.name(),
                key,
                value: v.to_string(),
            }),
        }
    }

    /// The prefix every object of this node goes under.
    pub fn root(&self) -> ObjectPath {
        match self.kind {
            // The fs root is the directory itself.
            StoreKind::Fs => ObjectPath::default(),
            _ => ObjectPath::from(self.get("root").unwrap_or_default()),
        }
    }

    /// Names this store in local state (upload marks): xxh3-64 of the
    /// connection string with secrets masked.
    pub fn id(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(self.to_string().as_bytes())
    }

    /// Builds the store. No request is made: a wrong endpoint or bad
    /// credentials show at the first use.
    pub fn build(&self) -> Result<Store, StoreError> {
        let t = self.kind.name();
        let built = |r: Result<Arc<dyn ObjectStore>, object_store::Error>| {
            r.map_err(|source| StoreError::Build {
                transport: t,
                source,
            })
        };
        // basalt retries every failed request itself, with its own backoff
        // (uploads, catalog, epochs, replica polls): the client's retries
        // stay short, so that a store that comes back is seen within about
        // a second, not after object_store's default of up to 15 s between
        // tries for 3 minutes.
        let retry = object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(1),
                base: 2.0,
            },
            max_retries: 3,
            retry_timeout: Duration::from_secs(10),
        };
        let inner: Arc<dyn ObjectStore> = match self.kind {
            StoreKind::Memory => Arc::new(object_store::memory::InMemory::new()),
            StoreKind::Fs => {
                let root = self.get("root").unwrap_or_default();
                std::fs::create_dir_all(root).map_err(|e| StoreError::Build {
                    transport: t,
                    source: object_store::Error::Generic {
                        store: "fs",
                        source: Box::new(e),
                    },
                })?;
                // Durable writes: the staged file and its directory are
                // fsynced before the object is published by rename/link.
                built(
                    object_store::local::LocalFileSystem::new_with_prefix(root)
                        .map(|s| Arc::new(s.with_fsync(true)) as Arc<dyn ObjectStore>),
                )?
            }
            StoreKind::S3 => {
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(self.get("bucket").unwrap_or_default());
                if let Some(v) = self.get("region") {
                    b = b.with_region(v);
                }
                if let Some(v) = self.get("endpoint") {
                    b = b.with_endpoint(v);
                }
                if let Some(v) = self.get("access_key_id") {
                    b = b.with_access_key_id(v);
                }
                if let Some(v) = self.get("secret_access_key") {
                    b = b.with_secret_access_key(v);
                }
                if let Some(v) = self.get("session_token") {
                    b = b.with_token(v);
                }
                if let Some(v) = self.flag("allow_http")? {
                    b = b.with_allow_http(v);
                }
                b = b.with_retry(retry.clone());
                built(b.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>))?
            }
            StoreKind::Azure => {
                let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_container_name(self.get("container").unwrap_or_default());
                if let Some(v) = self.get("account_name") {
                    b = b.with_account(v);
                }
                if let Some(v) = self.get("account_key") {
                    b = b.with_access_key(v);
                }
                if let Some(v) = self.get("endpoint") {
                    b = b
                        .with_endpoint(v.to_string())
                        .with_allow_http(v.starts_with("http://"));
                }
                if let Some(v) = self.flag("use_emulator")? {
                    b = b.with_use_emulator(v);
                }
                b = b.with_retry(retry.clone());
                built(b.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>))?
            }
            StoreKind::Gcs => {
                let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(self.get("bucket").unwrap_or_default());
                if let Some(v) = self.get("credential_path") {
                    b = b.with_service_account_path(v);
                }
                b = b.with_retry(retry);
                built(b.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>))?
            }
        };
        let stats = Arc::new(StoreStats::default());
        Ok(Store {
            inner: Arc::new(metered::Metered::new(inner, stats.clone())),
            root: self.root(),
            config: self.clone(),
            stats,
        })
    }
}

/// An opened object store and the prefix basalt writes under.
///
/// The cloud stores' pooled HTTP connections belong to the tokio runtime
/// that opened them; a connection reused from another runtime waits on a
/// runtime that is not running it (until its request times out). Build one
/// `Store` per runtime (cloning shares the pool).
#[derive(Clone, Debug)]
pub struct Store {
    pub inner: Arc<dyn ObjectStore>,
    pub root: ObjectPath,
    /// What it was built from (prints with secrets masked).
    pub config: StoreConfig,
    /// Requests and bytes so far (clones share them).
    pub stats: Arc<StoreStats>,
}

impl Store {
    /// The same store with faults injected as `control` says (tests).
    pub fn with_faults(&self, control: Arc<FaultControl>) -> Store {
        Store {
            inner: Arc::new(FaultyStore::new(self.inner.clone(), control)),
            ..self.clone()
        }
    }

    /// Keys under `prefix` that sort after `offset`, sorted. The listing
    /// is filtered here too: not every server honours the offset (Azurite
    /// returns everything).
    pub async fn list_after(
        &self,
        prefix: &ObjectPath,
        offset: &ObjectPath,
    ) -> Result<Vec<ObjectPath>, object_store::Error> {
        Ok(self
            .list_meta_after(prefix, offset)
            .await?
            .into_iter()
            .map(|m| m.location)
            .collect())
    }

    /// [`Store::list_after`] with each object's size and modification time.
    pub async fn list_meta_after(
        &self,
        prefix: &ObjectPath,
        offset: &ObjectPath,
    ) -> Result<Vec<object_store::ObjectMeta>, object_store::Error> {
        use futures_lite::StreamExt;
        let mut metas: Vec<object_store::ObjectMeta> = self
            .inner
            .list_with_offset(Some(prefix), offset)
            .try_collect()
            .await?;
        metas.retain(|m| &m.location > offset);
        metas.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(metas)
    }

    /// `root/<parts...>`.
    pub fn path(&self, parts: &[&str]) -> ObjectPath {
        let mut p = self.root.clone();
        for part in parts {
            p = p.join(*part);
        }
        p
    }
}

#[cfg(test)]
mod tests;

/// A fresh in-memory store and a runtime to drive it (unit tests).
#[cfg(test)]
pub(crate) fn memory_for_tests() -> (Store, tokio::runtime::Runtime) {
    let store = StoreConfig::parse("memory::")
        .expect("memory store")
        .build()
        .expect("memory store");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    (store, rt)
}
