//! A simulated disk: an in-memory file system that keeps what was not synced
//! pending, so a simulation can cut the power and get any crash image a real
//! disk may leave. The model (docs/simulation.md):
//!
//! - File data: every write and length change is applied at once to what
//!   the running process sees, and kept pending until an `fsync` or
//!   `fdatasync` of that file makes the file's whole content and length
//!   durable. At a crash each pending write of a file independently
//!   survives whole, is lost, or is torn: each of the pieces it covers of
//!   the file's 512-byte sectors (cut at absolute sector boundaries, as a
//!   device writes them) survives or not on its own; pending length
//!   changes survive or not. This covers lost,
//!   torn and reordered writes within one file and across files.
//! - Names: creating, linking, renaming and removing are namespace
//!   operations kept in one ordered journal, as ext4 and XFS journal them.
//!   `fsync` of a directory makes every pending operation that touched that
//!   directory durable (POSIX asks no more: a file's own fsync does not make
//!   its name durable). At a crash a prefix of the rest survives, in order.
//! - A process crash (`kill -9`) loses nothing: the page cache survives it.
//!   Only [`SimDisk::crash`] (power loss) drops what is pending.
//!
//! Paths under [`SimDisk::root`] are served by the disk once it is mounted
//! ([`SimDisk::mount`]); see [`super`].

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

use super::{Entry, Mode};

const SECTOR: usize = 512;

static MOUNTED: AtomicUsize = AtomicUsize::new(0);
static MOUNTS: RwLock<Vec<Arc<SimDisk>>> = RwLock::new(Vec::new());
static NEXT_ROOT: AtomicU64 = AtomicU64::new(0);

/// The simulated disk serving `path`, and the path's components below its root.
pub(super) fn lookup(path: &Path) -> Option<(Arc<SimDisk>, Vec<String>)> {
    if MOUNTED.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let mounts = MOUNTS.read().unwrap_or_else(|e| e.into_inner());
    for d in mounts.iter() {
        if let Ok(rel) = path.strip_prefix(&d.root) {
            let mut parts: Vec<String> = Vec::new();
            for c in rel.components() {
                match c {
                    Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
                    Component::ParentDir => {
                        parts.pop();
                    }
                    _ => {}
                }
            }
            return Some((d.clone(), parts));
        }
    }
    None
}

/// A mounted simulated disk; unmounted when dropped.
pub struct Mounted(Arc<SimDisk>);

impl std::ops::Deref for Mounted {
    type Target = SimDisk;
    fn deref(&self) -> &SimDisk {
        &self.0
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let mut mounts = MOUNTS.write().unwrap_or_else(|e| e.into_inner());
        mounts.retain(|d| !Arc::ptr_eq(d, &self.0));
        MOUNTED.store(mounts.len(), Ordering::Relaxed);
    }
}

#[derive(Clone, Debug)]
enum FileOp {
    Write { pos: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct FileNode {
    data: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<FileOp>,
}

#[derive(Debug)]
enum Node {
    File(FileNode),
    Dir(BTreeMap<String, usize>),
}

/// One namespace operation, with the inodes it names (so the journal can be
/// replayed onto the durable namespace whatever the current names are).
#[derive(Clone, Debug)]
enum NsOp {
    Link {
        dir: usize,
        name: String,
        ino: usize,
    },
    Unlink {
        dir: usize,
        name: String,
    },
    Rename {
        from: (usize, String),
        to: (usize, String),
        ino: usize,
    },
    Exchange {
        a: (usize, String, usize),
        b: (usize, String, usize),
    },
}

impl NsOp {
    fn touches(&self, dir: usize) -> bool {
        match self {
            NsOp::Link { dir: d, .. } | NsOp::Unlink { dir: d, .. } => *d == dir,
            NsOp::Rename { from, to, .. } => from.0 == dir || to.0 == dir,
            NsOp::Exchange { a, b } => a.0 == dir || b.0 == dir,
        }
    }
}

#[derive(Debug)]
struct Inner {
    nodes: Vec<Node>,
    /// Durable entries of each directory inode (absent: none yet).
    durable_dirs: HashMap<usize, BTreeMap<String, usize>>,
    /// Namespace journal not yet durable, in order.
    journal: Vec<NsOp>,
    /// Mutating operations so far.
    ops: u64,
    /// Mutating operations fail with EIO once `ops` reaches this.
    fail_at: Option<u64>,
    /// Hash chain over every mutating operation, for replay checks.
    trace: u64,
    /// Every mutating operation, when recording (to find where two runs part).
    recorded: Option<Vec<String>>,
}

/// What a crash did, for the simulation's log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CrashReport {
    pub writes_kept: u64,
    pub writes_lost: u64,
    pub writes_torn: u64,
    pub names_kept: u64,
    pub names_lost: u64,
}

/// An in-memory disk with crash images. See the module docs for the model.
#[derive(Debug)]
pub struct SimDisk {
    root: PathBuf,
    inner: Mutex<Inner>,
    /// Randomness for the node on this disk (table ids), from the seed.
    rng: Mutex<SmallRng>,
    /// The node's clock (µs since the epoch); every read advances it 1 ms.
    clock_us: std::sync::atomic::AtomicI64,
}

const ROOT: usize = 0;

fn eio() -> io::Error {
    io::Error::other("simulated disk: I/O error (the disk is failed or powered off)")
}

fn not_found(rel: &[String]) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("simulated disk: {} not found", rel.join("/")),
    )
}

impl SimDisk {
    /// Creates an empty disk and mounts it at a fresh root path.
    pub fn mount() -> Mounted {
        Self::mount_seeded(0)
    }

    /// [`SimDisk::mount`] with the node's randomness drawn from `seed`.
    pub fn mount_seeded(seed: u64) -> Mounted {
        let n = NEXT_ROOT.fetch_add(1, Ordering::Relaxed);
        let root = PathBuf::from(format!("/basalt-sim/{}-{n}", std::process::id()));
        let mut durable_dirs = HashMap::new();
        durable_dirs.insert(ROOT, BTreeMap::new());
        let d = Arc::new(SimDisk {
            root,
            inner: Mutex::new(Inner {
                nodes: vec![Node::Dir(BTreeMap::new())],
                durable_dirs,
                journal: Vec::new(),
                ops: 0,
                fail_at: None,
                trace: 0,
                recorded: None,
            }),
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
            clock_us: std::sync::atomic::AtomicI64::new(1_700_000_000_000_000),
        });
        let mut mounts = MOUNTS.write().unwrap_or_else(|e| e.into_inner());
        mounts.push(d.clone());
        MOUNTED.store(mounts.len(), Ordering::Relaxed);
        Mounted(d)
    }

    /// The path this disk is mounted at.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn random_u64(&self) -> u64 {
        self.rng
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_u64()
    }

    pub(super) fn now_us(&self) -> i64 {
        self.clock_us.fetch_add(1000, Ordering::Relaxed)
    }

    /// Moves the clock by `delta_us` (negative: a step back, as NTP may do).
    pub fn step_clock(&self, delta_us: i64) {
        self.clock_us.fetch_add(delta_us, Ordering::Relaxed);
    }

    /// Starts recording every mutating operation (see [`SimDisk::recorded`]).
    pub fn record(&self) {
        self.lock().recorded = Some(Vec::new());
    }

    /// The operations recorded since [`SimDisk::record`], oldest first.
    pub fn recorded(&self) -> Vec<String> {
        self.lock().recorded.clone().unwrap_or_default()
    }

    /// A hash of every mutating operation so far, in order: two runs of one
    /// seed that did the same I/O have the same trace.
    pub fn trace(&self) -> u64 {
        self.lock().trace
    }

    /// Operations (file writes and namespace changes) not yet durable.
    pub fn pending(&self) -> usize {
        let g = self.lock();
        let files: usize = g
            .nodes
            .iter()
            .map(|n| match n {
                Node::File(f) => f.pending.len(),
                Node::Dir(_) => 0,
            })
            .sum();
        files + g.journal.len()
    }

    /// Every mutating operation from the `n`th from now on fails with EIO
    /// (the power went at that point; reads still work until [`SimDisk::crash`]).
    pub fn fail_after(&self, n: u64) {
        let mut g = self.lock();
        g.fail_at = Some(g.ops + n);
    }

    /// Mutating operations fail from now on.
    pub fn freeze(&self) {
        self.fail_after(0);
    }

    /// Mutating operations work again.
    pub fn heal(&self) {
        self.lock().fail_at = None;
    }

    /// Cuts the power: what was not durable survives, is lost or is torn as
    /// `rng` decides within the model, and the result becomes both what is
    /// seen and what is durable. The disk works again afterwards.
    pub fn crash(&self, rng: &mut impl RngCore) -> CrashReport {
        let mut g = self.lock();
        let mut report = CrashReport::default();
        // Some crashes lose everything pending, some nothing, most a mix:
        // the extremes are where ordering bugs show first.
        let style = rng.random_range(0..4u8);
        let (keep_p, tear_p) = match style {
            0 => (0.0, 0.0),
            1 => (1.0, 0.0),
            _ => (0.5, 0.25),
        };
        // Names: a prefix of the journal survives, in order.
        let keep_names = match style {
            0 => 0,
            1 => g.journal.len(),
            _ => rng.random_range(0..=g.journal.len()),
        };
        let journal = std::mem::take(&mut g.journal);
        for (i, op) in journal.into_iter().enumerate() {
            if i < keep_names {
                report.names_kept += 1;
                g.commit(op);
            } else {
                report.names_lost += 1;
            }
        }
        // Data: each pending op of each file on its own.
        for node in g.nodes.iter_mut() {
            let Node::File(f) = node else { continue };
            let mut img = std::mem::take(&mut f.durable);
            for op in std::mem::take(&mut f.pending) {
                let r: f64 = rng.random();
                match op {
                    FileOp::Write { pos, data } => {
                        let end = pos + data.len() as u64;
                        let spans_sectors =
                            !data.is_empty() && pos / SECTOR as u64 != (end - 1) / SECTOR as u64;
                        if r < keep_p {
                            report.writes_kept += 1;
                            write_into(&mut img, pos, &data);
                        } else if r < keep_p + tear_p && spans_sectors {
                            report.writes_torn += 1;
                            // Pieces cut at absolute sector boundaries.
                            let mut at = pos;
                            while at < end {
                                let next = ((at / SECTOR as u64 + 1) * SECTOR as u64).min(end);
                                if rng.random_bool(0.5) {
                                    let piece = &data[(at - pos) as usize..(next - pos) as usize];
                                    write_into(&mut img, at, piece);
                                }
                                at = next;
                            }
                        } else {
                            report.writes_lost += 1;
                        }
                    }
                    FileOp::SetLen(len) => {
                        if r < keep_p {
                            img.resize(len as usize, 0);
                        }
                    }
                }
            }
            f.data = img.clone();
            f.durable = img;
        }
        // What is seen is now exactly the durable namespace.
        let dirs: Vec<(usize, BTreeMap<String, usize>)> = g
            .durable_dirs
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for (ino, entries) in dirs {
            if let Some(Node::Dir(d)) = g.nodes.get_mut(ino) {
                *d = entries;
            }
        }
        for ino in 0..g.nodes.len() {
            if matches!(g.nodes[ino], Node::Dir(_)) && !g.durable_dirs.contains_key(&ino) {
                g.nodes[ino] = Node::Dir(BTreeMap::new());
            }
        }
        g.fail_at = None;
        report
    }

    pub(super) fn open(self: &Arc<Self>, rel: &[String], mode: Mode) -> io::Result<SimFile> {
        let mut g = self.lock();
        let ino = match (g.resolve(rel), mode) {
            (Some(_), Mode::CreateNew) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("simulated disk: {} exists", rel.join("/")),
                ))
            }
            (Some(ino), _) => ino,
            (None, Mode::Read | Mode::Write) => return Err(not_found(rel)),
            (None, Mode::Create | Mode::CreateNew | Mode::Truncate) => {
                g.mutate(b"create", rel.join("/").as_bytes())?;
                let (dir, name) = g.parent(rel)?;
                g.link(dir, name, Node::File(FileNode::default()))
            }
        };
        if matches!(g.nodes[ino], Node::Dir(_)) && mode != Mode::Read {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("simulated disk: {} is a directory", rel.join("/")),
            ));
        }
        let f = SimFile {
            disk: self.clone(),
            ino,
        };
        drop(g);
        if mode == Mode::Truncate && f.len()? > 0 {
            f.set_len(0)?;
        }
        Ok(f)
    }

    pub(super) fn read(&self, rel: &[String]) -> io::Result<Vec<u8>> {
        let g = self.lock();
        match g.resolve(rel).map(|i| &g.nodes[i]) {
            Some(Node::File(f)) => Ok(f.data.clone()),
            Some(Node::Dir(_)) => Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("simulated disk: {} is a directory", rel.join("/")),
            )),
            None => Err(not_found(rel)),
        }
    }

    pub(super) fn write(self: &Arc<Self>, rel: &[String], bytes: &[u8]) -> io::Result<()> {
        let f = self.open(rel, Mode::Truncate)?;
        f.write_at(bytes, 0)
    }

    pub(super) fn rename(&self, from: &[String], to: &[String], exchange: bool) -> io::Result<()> {
        let mut g = self.lock();
        let src = g.resolve(from).ok_or_else(|| not_found(from))?;
        let (fd, fname) = g.parent(from)?;
        let (td, tname) = g.parent(to)?;
        let dst = g.resolve(to);
        let tag: &[u8] = if exchange { b"exchange" } else { b"rename" };
        g.mutate(
            tag,
            format!("{}>{}", from.join("/"), to.join("/")).as_bytes(),
        )?;
        if exchange {
            let dst = dst.ok_or_else(|| not_found(to))?;
            g.dir_mut(fd).insert(fname.clone(), dst);
            g.dir_mut(td).insert(tname.clone(), src);
            g.journal.push(NsOp::Exchange {
                a: (fd, fname, src),
                b: (td, tname, dst),
            });
            return Ok(());
        }
        if let Some(dst) = dst {
            let refused = match (&g.nodes[src], &g.nodes[dst]) {
                (_, Node::Dir(d)) if !d.is_empty() => true,
                (Node::File(_), Node::Dir(_)) | (Node::Dir(_), Node::File(_)) => true,
                _ => false,
            };
            if refused {
                return Err(io::Error::other(format!(
                    "simulated disk: cannot rename {} onto {}",
                    from.join("/"),
                    to.join("/")
                )));
            }
        }
        g.dir_mut(fd).remove(&fname);
        g.dir_mut(td).insert(tname.clone(), src);
        g.journal.push(NsOp::Rename {
            from: (fd, fname),
            to: (td, tname),
            ino: src,
        });
        Ok(())
    }

    pub(super) fn remove(&self, rel: &[String], recursive: bool) -> io::Result<()> {
        let mut g = self.lock();
        let ino = g.resolve(rel).ok_or_else(|| not_found(rel))?;
        let is_dir = matches!(g.nodes[ino], Node::Dir(_));
        if is_dir && !recursive {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("simulated disk: {} is a directory", rel.join("/")),
            ));
        }
        if !is_dir && recursive {
            return Err(io::Error::other(format!(
                "simulated disk: {} is not a directory",
                rel.join("/")
            )));
        }
        g.mutate(b"remove", rel.join("/").as_bytes())?;
        // Children first, as remove_dir_all does, so a crash can leave a
        // directory half emptied.
        g.unlink_tree(ino);
        let (dir, name) = g.parent(rel)?;
        g.dir_mut(dir).remove(&name);
        g.journal.push(NsOp::Unlink { dir, name });
        Ok(())
    }

    pub(super) fn create_dir(&self, rel: &[String], all: bool) -> io::Result<()> {
        let mut g = self.lock();
        for depth in 1..=rel.len() {
            let prefix = &rel[..depth];
            match g.resolve(prefix) {
                Some(ino) => {
                    let last = depth == rel.len();
                    if matches!(g.nodes[ino], Node::File(_)) {
                        return Err(io::Error::other(format!(
                            "simulated disk: {} is a file",
                            prefix.join("/")
                        )));
                    }
                    if last && !all {
                        return Err(io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            format!("simulated disk: {} exists", prefix.join("/")),
                        ));
                    }
                }
                None => {
                    if depth < rel.len() && !all {
                        return Err(not_found(prefix));
                    }
                    g.mutate(b"mkdir", prefix.join("/").as_bytes())?;
                    let (dir, name) = g.parent(prefix)?;
                    g.link(dir, name, Node::Dir(BTreeMap::new()));
                }
            }
        }
        Ok(())
    }

    pub(super) fn read_dir(&self, rel: &[String]) -> io::Result<Vec<Entry>> {
        let g = self.lock();
        match g.resolve(rel).map(|i| &g.nodes[i]) {
            Some(Node::Dir(d)) => Ok(d
                .iter()
                .map(|(name, ino)| Entry {
                    name: name.clone(),
                    is_dir: matches!(g.nodes[*ino], Node::Dir(_)),
                })
                .collect()),
            Some(Node::File(_)) => Err(io::Error::other(format!(
                "simulated disk: {} is not a directory",
                rel.join("/")
            ))),
            None => Err(not_found(rel)),
        }
    }

    /// (is a directory, length).
    pub(super) fn stat(&self, rel: &[String]) -> io::Result<(bool, u64)> {
        let g = self.lock();
        match g.resolve(rel).map(|i| &g.nodes[i]) {
            Some(Node::Dir(_)) => Ok((true, 0)),
            Some(Node::File(f)) => Ok((false, f.data.len() as u64)),
            None => Err(not_found(rel)),
        }
    }

    pub(super) fn sync_dir(&self, rel: &[String]) -> io::Result<()> {
        let mut g = self.lock();
        let ino = g.resolve(rel).ok_or_else(|| not_found(rel))?;
        g.mutate(b"syncdir", rel.join("/").as_bytes())?;
        g.commit_dir(ino);
        Ok(())
    }
}

fn write_into(buf: &mut Vec<u8>, pos: u64, data: &[u8]) {
    let pos = pos as usize;
    let end = pos + data.len();
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf[pos..end].copy_from_slice(data);
}

impl Inner {
    /// Counts a mutating operation, or fails it once the disk is failed.
    fn mutate(&mut self, kind: &[u8], detail: &[u8]) -> io::Result<()> {
        if self.fail_at.is_some_and(|at| self.ops >= at) {
            return Err(eio());
        }
        self.ops += 1;
        if let Some(r) = &mut self.recorded {
            r.push(format!(
                "{} {}",
                String::from_utf8_lossy(kind),
                String::from_utf8_lossy(detail)
            ));
        }
        self.trace = xxhash_rust::xxh3::xxh3_64_with_seed(kind, self.trace);
        self.trace = xxhash_rust::xxh3::xxh3_64_with_seed(detail, self.trace);
        Ok(())
    }

    fn resolve(&self, rel: &[String]) -> Option<usize> {
        let mut ino = ROOT;
        for part in rel {
            match &self.nodes[ino] {
                Node::Dir(d) => ino = *d.get(part)?,
                Node::File(_) => return None,
            }
        }
        Some(ino)
    }

    fn parent(&self, rel: &[String]) -> io::Result<(usize, String)> {
        let Some((name, dir)) = rel.split_last() else {
            return Err(io::Error::other("simulated disk: the root has no parent"));
        };
        match self.resolve(dir) {
            Some(ino) if matches!(self.nodes[ino], Node::Dir(_)) => Ok((ino, name.clone())),
            _ => Err(not_found(dir)),
        }
    }

    fn dir_mut(&mut self, ino: usize) -> &mut BTreeMap<String, usize> {
        match &mut self.nodes[ino] {
            Node::Dir(d) => d,
            Node::File(_) => unreachable!("parent() returns directories only"),
        }
    }

    fn link(&mut self, dir: usize, name: String, node: Node) -> usize {
        let ino = self.nodes.len();
        self.nodes.push(node);
        self.dir_mut(dir).insert(name.clone(), ino);
        self.journal.push(NsOp::Link { dir, name, ino });
        ino
    }

    fn unlink_tree(&mut self, ino: usize) {
        let Node::Dir(d) = &self.nodes[ino] else {
            return;
        };
        let children: Vec<(String, usize)> = d.iter().map(|(k, v)| (k.clone(), *v)).collect();
        for (name, child) in children {
            self.unlink_tree(child);
            self.dir_mut(ino).remove(&name);
            self.journal.push(NsOp::Unlink { dir: ino, name });
        }
    }

    /// An fsync of directory `ino`: every journal entry touching it becomes
    /// durable, in order; the others stay pending.
    fn commit_dir(&mut self, ino: usize) {
        let journal = std::mem::take(&mut self.journal);
        let mut rest = Vec::with_capacity(journal.len());
        for op in journal {
            if op.touches(ino) {
                self.commit(op);
            } else {
                rest.push(op);
            }
        }
        self.journal = rest;
    }

    /// Makes one journal entry durable.
    fn commit(&mut self, op: NsOp) {
        let d = &mut self.durable_dirs;
        match op {
            NsOp::Link { dir, name, ino } => {
                d.entry(dir).or_default().insert(name, ino);
                d.entry(ino).or_default();
            }
            NsOp::Unlink { dir, name } => {
                d.entry(dir).or_default().remove(&name);
            }
            NsOp::Rename { from, to, ino } => {
                let f = d.entry(from.0).or_default();
                if f.get(&from.1) == Some(&ino) {
                    f.remove(&from.1);
                }
                d.entry(to.0).or_default().insert(to.1, ino);
            }
            NsOp::Exchange { a, b } => {
                d.entry(a.0).or_default().insert(a.1, b.2);
                d.entry(b.0).or_default().insert(b.1, a.2);
            }
        }
        // Only directories have durable entry maps.
        let nodes = &self.nodes;
        d.retain(|ino, _| matches!(nodes.get(*ino), Some(Node::Dir(_))));
    }

    fn file_mut(&mut self, ino: usize) -> &mut FileNode {
        match &mut self.nodes[ino] {
            Node::File(f) => f,
            Node::Dir(_) => unreachable!("SimFile is opened on files only"),
        }
    }
}

/// An open file of a [`SimDisk`]. Like a descriptor, it keeps working on the
/// inode after the name is removed or replaced.
#[derive(Debug)]
pub struct SimFile {
    disk: Arc<SimDisk>,
    ino: usize,
}

impl SimFile {
    fn is_dir(&self, g: &Inner) -> bool {
        matches!(g.nodes[self.ino], Node::Dir(_))
    }

    pub(super) fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        let mut g = self.disk.lock();
        if self.is_dir(&g) {
            return Err(io::Error::new(io::ErrorKind::IsADirectory, "directory"));
        }
        let detail = format!(
            "ino {} at {pos}: {} bytes {:016x}",
            self.ino,
            buf.len(),
            xxhash_rust::xxh3::xxh3_64(buf)
        );
        g.mutate(b"write", detail.as_bytes())?;
        let f = g.file_mut(self.ino);
        write_into(&mut f.data, pos, buf);
        f.pending.push(FileOp::Write {
            pos,
            data: buf.to_vec(),
        });
        Ok(())
    }

    pub(super) fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let g = self.disk.lock();
        let data: &[u8] = match &g.nodes[self.ino] {
            Node::File(f) => &f.data,
            Node::Dir(_) => return Err(io::Error::new(io::ErrorKind::IsADirectory, "directory")),
        };
        let start = (pos as usize).min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    pub(super) fn contents(&self) -> io::Result<Vec<u8>> {
        let g = self.disk.lock();
        match &g.nodes[self.ino] {
            Node::File(f) => Ok(f.data.clone()),
            Node::Dir(_) => Err(io::Error::new(io::ErrorKind::IsADirectory, "directory")),
        }
    }

    pub(super) fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        if self.read_at(buf, pos)? < buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "simulated disk: read past the end of the file",
            ));
        }
        Ok(())
    }

    pub(super) fn sync(&self) -> io::Result<()> {
        let mut g = self.disk.lock();
        if self.is_dir(&g) {
            drop(g);
            return self.sync_dir_inode();
        }
        g.mutate(b"sync", format!("ino {}", self.ino).as_bytes())?;
        let f = g.file_mut(self.ino);
        f.durable = f.data.clone();
        f.pending.clear();
        Ok(())
    }

    fn sync_dir_inode(&self) -> io::Result<()> {
        let mut g = self.disk.lock();
        g.mutate(b"syncdir", format!("ino {}", self.ino).as_bytes())?;
        g.commit_dir(self.ino);
        Ok(())
    }

    pub(super) fn len(&self) -> io::Result<u64> {
        let g = self.disk.lock();
        Ok(match &g.nodes[self.ino] {
            Node::File(f) => f.data.len() as u64,
            Node::Dir(_) => 0,
        })
    }

    pub(super) fn set_len(&self, len: u64) -> io::Result<()> {
        let mut g = self.disk.lock();
        if self.is_dir(&g) {
            return Err(io::Error::new(io::ErrorKind::IsADirectory, "directory"));
        }
        g.mutate(b"setlen", format!("ino {} to {len}", self.ino).as_bytes())?;
        let f = g.file_mut(self.ino);
        f.data.resize(len as usize, 0);
        f.pending.push(FileOp::SetLen(len));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super as disk;
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn synced_data_and_names_survive_every_crash() {
        for seed in 0..200 {
            let d = SimDisk::mount();
            let dir = d.root().join("t");
            disk::create_dir_all(&dir).unwrap();
            disk::sync_dir(d.root()).unwrap();
            let f = disk::open(&dir.join("a"), Mode::Create).unwrap();
            f.write_all_at(&[7u8; 2000], 0).unwrap();
            f.sync_data().unwrap();
            disk::sync_dir(&dir).unwrap();
            // Unsynced: a second write and a second file.
            f.write_all_at(&[9u8; 1500], 2000).unwrap();
            disk::write(&dir.join("b"), b"unsynced").unwrap();
            let mut rng = SmallRng::seed_from_u64(seed);
            d.crash(&mut rng);
            let a = disk::read(&dir.join("a")).unwrap();
            assert!(a.len() >= 2000 && a[..2000] == [7u8; 2000], "seed {seed}");
            // The tail holds pieces of the unsynced write cut at absolute
            // sector boundaries (2048, 2560, 3072), each whole or absent
            // (absent before a later piece: zeros).
            assert!(
                matches!(a.len(), 2000 | 2048 | 2560 | 3072 | 3500),
                "seed {seed}: {}",
                a.len()
            );
            for piece in [2000..2048, 2048..2560, 2560..3072, 3072..3500] {
                let got = &a[piece.start.min(a.len())..piece.end.min(a.len())];
                assert!(
                    got.iter().all(|b| *b == 9) || got.iter().all(|b| *b == 0),
                    "seed {seed}: piece {piece:?} is torn inside"
                );
            }
            if let Ok(b) = disk::read(&dir.join("b")) {
                assert!(b"unsynced".starts_with(&b), "seed {seed}");
            }
        }
    }

    #[test]
    fn a_name_needs_its_directory_synced() {
        let mut lost = 0;
        for seed in 0..100 {
            let d = SimDisk::mount();
            let f = disk::open(&d.root().join("x"), Mode::CreateNew).unwrap();
            f.write_all_at(b"data", 0).unwrap();
            f.sync_all().unwrap();
            d.crash(&mut SmallRng::seed_from_u64(seed));
            if !disk::exists(&d.root().join("x")) {
                lost += 1;
            }
        }
        assert!(
            lost > 0,
            "a file fsync alone must not make its name durable"
        );
    }

    #[test]
    fn renames_survive_in_journal_order() {
        // write tmp, sync it, rename over the target: after any crash the
        // target holds the old or the new bytes, never a mix or nothing.
        for seed in 0..200 {
            let d = SimDisk::mount();
            let t = d.root().join("target");
            disk::write(&t, b"old").unwrap();
            disk::open(&t, Mode::Write).unwrap().sync_all().unwrap();
            disk::sync_dir(d.root()).unwrap();
            let tmp = d.root().join("tmp");
            disk::write(&tmp, b"new").unwrap();
            disk::open(&tmp, Mode::Write).unwrap().sync_all().unwrap();
            disk::rename(&tmp, &t).unwrap();
            d.crash(&mut SmallRng::seed_from_u64(seed));
            let got = disk::read(&t).unwrap();
            assert!(got == b"old" || got == b"new", "seed {seed}: {got:?}");
        }
    }

    #[test]
    fn failed_disk_refuses_writes_and_traces_replay() {
        let run = || {
            let d = SimDisk::mount();
            disk::write(&d.root().join("a"), b"1").unwrap();
            d.fail_after(1);
            disk::write(&d.root().join("b"), b"2").unwrap_err();
            assert!(disk::read(&d.root().join("a")).is_ok());
            d.trace()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn remove_and_exchange() {
        let d = SimDisk::mount();
        let a = d.root().join("a");
        let b = d.root().join("b");
        disk::create_dir_all(&a.join("p")).unwrap();
        disk::write(&a.join("p/f"), b"x").unwrap();
        disk::create_dir(&b).unwrap();
        disk::rename_exchange(&a, &b).unwrap();
        assert!(disk::exists(&b.join("p/f")));
        assert!(disk::read_dir(&a).unwrap().is_empty());
        disk::remove_dir_all(&b).unwrap();
        assert!(!disk::exists(&b));
        assert_eq!(
            disk::read_dir(d.root()).unwrap(),
            vec![Entry {
                name: "a".into(),
                is_dir: true
            }]
        );
    }
}
