//! Counting what basalt asks of the object store: requests and bytes by
//! kind (PUT, GET, LIST), overall and per table, for `/metrics`. Every
//! store [`super::StoreConfig::build`] makes is wrapped in this.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// Requests and bytes of one kind of store operation.
#[derive(Debug, Default)]
pub struct OpCounters {
    pub puts: AtomicU64,
    pub put_bytes: AtomicU64,
    pub gets: AtomicU64,
    pub get_bytes: AtomicU64,
    pub lists: AtomicU64,
    pub errors: AtomicU64,
}

/// A snapshot of [`OpCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct OpCounts {
    pub puts: u64,
    pub put_bytes: u64,
    pub gets: u64,
    pub get_bytes: u64,
    pub lists: u64,
    pub errors: u64,
}

impl OpCounters {
    pub fn snapshot(&self) -> OpCounts {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        OpCounts {
            puts: l(&self.puts),
            put_bytes: l(&self.put_bytes),
            gets: l(&self.gets),
            get_bytes: l(&self.get_bytes),
            lists: l(&self.lists),
            errors: l(&self.errors),
        }
    }
}

/// Counters of one store: all requests, and those under `tables/<name>/`.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub total: OpCounters,
    tables: Mutex<BTreeMap<String, Arc<OpCounters>>>,
}

impl StoreStats {
    /// Per-table snapshots, by table name.
    pub fn tables(&self) -> BTreeMap<String, OpCounts> {
        self.tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.snapshot()))
            .collect()
    }

    fn for_path(&self, path: &Path) -> Option<Arc<OpCounters>> {
        let mut parts = path.parts();
        let table = loop {
            let p = parts.next()?;
            if p.as_ref() == crate::replication::TABLES_PREFIX {
                break parts.next()?;
            }
        };
        let mut t = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        Some(t.entry(table.as_ref().to_string()).or_default().clone())
    }

    fn count(&self, path: Option<&Path>, f: impl Fn(&OpCounters)) {
        f(&self.total);
        if let Some(c) = path.and_then(|p| self.for_path(p)) {
            f(&c);
        }
    }
}

/// An object store that counts what passes through it.
#[derive(Debug)]
pub struct Metered {
    inner: Arc<dyn ObjectStore>,
    stats: Arc<StoreStats>,
}

impl Metered {
    pub fn new(inner: Arc<dyn ObjectStore>, stats: Arc<StoreStats>) -> Metered {
        Metered { inner, stats }
    }

    fn error<T>(&self, path: Option<&Path>, r: Result<T>) -> Result<T> {
        // "Not found" is an answer, not a failure: a replica asks for the
        // next segment before it exists on every poll.
        if r.as_ref()
            .is_err_and(|e| !matches!(e, object_store::Error::NotFound { .. }))
        {
            self.stats.count(path, |c| {
                c.errors.fetch_add(1, Ordering::Relaxed);
            });
        }
        r
    }
}

impl fmt::Display for Metered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Metered({})", self.inner)
    }
}

fn add(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

#[async_trait]
impl ObjectStore for Metered {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let bytes = payload.content_length() as u64;
        self.stats.count(Some(location), |c| {
            add(&c.puts, 1);
            add(&c.put_bytes, bytes);
        });
        let r = self.inner.put_opts(location, payload, opts).await;
        self.error(Some(location), r)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.stats.count(Some(location), |c| add(&c.puts, 1));
        let r = self.inner.put_multipart_opts(location, opts).await;
        self.error(Some(location), r)
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let r = self.inner.get_opts(location, options).await;
        let bytes = r.as_ref().map_or(0, |g| g.range.end - g.range.start);
        self.stats.count(Some(location), |c| {
            add(&c.gets, 1);
            add(&c.get_bytes, bytes);
        });
        self.error(Some(location), r)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.stats.count(prefix, |c| add(&c.lists, 1));
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.stats.count(prefix, |c| add(&c.lists, 1));
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.stats.count(prefix, |c| add(&c.lists, 1));
        let r = self.inner.list_with_delimiter(prefix).await;
        self.error(prefix, r)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
