//! A fault-injecting object store for tests: errors, latency, a store that
//! is down for a while, and uploads that land but report failure (the
//! client cannot tell whether its PUT happened). Faults are switched at run
//! time through the shared [`FaultControl`].

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// What the faulty store does; change it while the store is in use.
#[derive(Debug, Default)]
pub struct FaultControl {
    /// Every request fails (the store is unreachable).
    pub down: AtomicBool,
    /// Added to every request, in milliseconds.
    pub latency_ms: AtomicU64,
    /// Every n-th PUT fails before writing anything (0 = never).
    pub fail_put_every: AtomicU64,
    /// Every n-th PUT writes the object, then reports a failure (0 = never).
    pub fail_after_put_every: AtomicU64,
    /// Every n-th GET fails (0 = never).
    pub fail_get_every: AtomicU64,
    puts: AtomicU64,
    gets: AtomicU64,
    /// Faults injected so far.
    pub injected: AtomicU64,
}

impl FaultControl {
    fn nth(counter: &AtomicU64, every: &AtomicU64) -> bool {
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        let every = every.load(Ordering::Relaxed);
        every != 0 && n.is_multiple_of(every)
    }
}

/// Wraps a store with the faults `control` asks for.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    control: Arc<FaultControl>,
}

fn injected(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "faulty",
        source: format!("injected fault: {what}").into(),
    }
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>, control: Arc<FaultControl>) -> FaultyStore {
        FaultyStore { inner, control }
    }

    async fn before(&self, what: &str) -> Result<()> {
        let ms = self.control.latency_ms.load(Ordering::Relaxed);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if self.control.down.load(Ordering::Relaxed) {
            self.control.injected.fetch_add(1, Ordering::Relaxed);
            return Err(injected(&format!("store down ({what})")));
        }
        Ok(())
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.before("put").await?;
        let c = &self.control;
        let n = c.puts.fetch_add(1, Ordering::Relaxed) + 1;
        let every = |a: &AtomicU64| {
            let e = a.load(Ordering::Relaxed);
            e != 0 && n.is_multiple_of(e)
        };
        if every(&c.fail_put_every) {
            c.injected.fetch_add(1, Ordering::Relaxed);
            return Err(injected("put refused"));
        }
        let r = self.inner.put_opts(location, payload, opts).await?;
        if every(&c.fail_after_put_every) {
            c.injected.fetch_add(1, Ordering::Relaxed);
            return Err(injected("connection lost after the put landed"));
        }
        Ok(r)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.before("multipart put").await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.before("get").await?;
        let c = &self.control;
        if FaultControl::nth(&c.gets, &c.fail_get_every) {
            c.injected.fetch_add(1, Ordering::Relaxed);
            return Err(injected("get failed"));
        }
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        if self.control.down.load(Ordering::Relaxed) {
            self.control.injected.fetch_add(1, Ordering::Relaxed);
            return futures_util::stream::once(async { Err(injected("store down (list)")) })
                .boxed();
        }
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        if self.control.down.load(Ordering::Relaxed) {
            self.control.injected.fetch_add(1, Ordering::Relaxed);
            return futures_util::stream::once(async { Err(injected("store down (list)")) })
                .boxed();
        }
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.before("list").await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.before("copy").await?;
        self.inner.copy_opts(from, to, options).await
    }
}
