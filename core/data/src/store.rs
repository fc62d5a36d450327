//! The data path: where inputs are read, outputs staged and published, and a
//! job's state kept. One type, [`Store`], for every location a job names:
//!
//! - a local path (`data/in`, `/srv/out`): the file system, directly (renames,
//!   hard links and one `syncfs` per batch of commit markers);
//! - a URL (`s3://bucket/prefix`, `file:///abs/dir`): an `object_store` client,
//!   configured by the job's provider (`Provider::object_store`: region,
//!   endpoint) and signed with credentials the provider issues, refreshed by
//!   core's credential rule ([`mayfly_model::policy::CredentialPolicy`]).
//!
//! Keys are `/`-separated and relative to the store's root. Every call blocks
//! the calling thread (remote calls run on the provider runtime), so core's
//! threads use it like the file system.
//!
//! In `mayfly-data`'s flow (`core/tests/flow.rs` checks it) no module is above it; like
//! its crate, it must not import `mayfly-core`, `mayfly-ops` or the binary.

use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::gate::Gate;
use crate::provider::ProviderHandle;
#[cfg(any(feature = "s3", feature = "azure"))]
use crate::provider::Secret;
use crate::readahead::{ReadAhead, ReadAheadConfig};
#[cfg(any(feature = "s3", feature = "azure"))]
use mayfly_model::policy::{CredentialAction, CredentialPolicy, Millis, Validity};
use mayfly_sandbox::InputSource;

/// A job's location as its file names it: a local path (resolved against the
/// job file's directory) or a URL with a scheme.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Location(String);

/// Why a text is not a location. The caller names the key it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    /// Nothing at all.
    #[error("is empty")]
    Empty,
    /// `<scheme>://` with a scheme that is not lowercase letters and digits.
    #[error("`{text}`: `{scheme}` is not a URL scheme")]
    Scheme {
        /// The location as written.
        text: String,
        /// The scheme as written.
        scheme: String,
    },
    /// `file://` with a relative path.
    #[error("`{0}`: a file:// URL needs an absolute path (file:///dir)")]
    RelativeFile(String),
    /// A remote URL without its bucket or container.
    #[error("`{text}`: expected {scheme}://<bucket or container>/<prefix>")]
    NoBucket {
        /// The location as written.
        text: String,
        /// The scheme.
        scheme: String,
    },
}

/// Why a location could not be opened as a store; each names the location.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A `file://` directory could not be made or opened.
    #[error("{url}: {source}")]
    Directory {
        /// The location.
        url: String,
        /// The cause.
        source: io::Error,
    },
    /// The job's provider could not configure the store (it serves no such
    /// scheme, or it failed); its message names the location.
    #[error("{source}")]
    Provider {
        /// The location.
        url: String,
        /// The provider's error.
        source: mayfly_provider_api::ProviderError,
    },
    /// The call to the provider could not run (no runtime, or it panicked):
    /// mayfly's own failure (`mayfly_model::Internal` inside).
    #[error("{url}: {source}")]
    Call {
        /// The location.
        url: String,
        /// The cause.
        source: io::Error,
    },
    /// This `mayfly` was built without the client for the scheme.
    #[error(
        "{url}: this mayfly was built without {client} support; build it with `--features {feature}` \
         (as the {artifact} node artifact is)"
    )]
    NotBuiltIn {
        /// The location.
        url: String,
        /// The client left out ("S3", "Azure Blob").
        client: &'static str,
        /// The feature that builds it in.
        feature: &'static str,
        /// The node artifact that has it ("AWS", "Azure").
        artifact: &'static str,
    },
    /// The provider configures a kind of store no client of mayfly speaks.
    #[error("{url}: the {provider} provider configures `{scheme}` stores, which this mayfly has no client for")]
    NoClient {
        /// The location.
        url: String,
        /// The provider's name.
        provider: String,
        /// The kind of store it asked for.
        scheme: String,
    },
    /// The provider's configuration of the client was refused by it.
    #[error("{url}: the {provider} provider gave an unknown {client} option `{key}`: {reason}")]
    UnknownOption {
        /// The location.
        url: String,
        /// The provider's name.
        provider: String,
        /// The client ("S3", "Azure Blob").
        client: &'static str,
        /// The option.
        key: String,
        /// Why the client refused it.
        reason: String,
    },
    /// The client could not be built from the provider's configuration.
    #[error("{url}: {source}")]
    Client {
        /// The location.
        url: String,
        /// The cause.
        source: object_store::Error,
    },
}

impl Location {
    /// `text` as the job file at `base` names it: a URL stays as it is (minus a
    /// trailing `/`); a relative path is resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Location, LocationError> {
        if text.is_empty() {
            return Err(LocationError::Empty);
        }
        if let Some((scheme, rest)) = text.split_once("://") {
            if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) {
                return Err(LocationError::Scheme { text: text.to_owned(), scheme: scheme.to_owned() });
            }
            let rest = rest.trim_end_matches('/');
            if scheme == "file" {
                if !rest.starts_with('/') {
                    return Err(LocationError::RelativeFile(text.to_owned()));
                }
            } else if rest.is_empty() || rest.starts_with('/') {
                return Err(LocationError::NoBucket { text: text.to_owned(), scheme: scheme.to_owned() });
            }
            return Ok(Location(format!("{scheme}://{rest}")));
        }
        let path = Path::new(text);
        Ok(Location(if path.is_absolute() { path.to_owned() } else { base.join(path) }.to_string_lossy().into_owned()))
    }

    /// A local path, as it is.
    pub fn path(path: &Path) -> Location {
        Location(path.to_string_lossy().into_owned())
    }

    /// The URL's scheme, or `None` for a local path.
    pub fn scheme(&self) -> Option<&str> {
        self.0.split_once("://").map(|(s, _)| s)
    }

    /// The local path, if this is one.
    pub fn as_path(&self) -> Option<&Path> {
        self.scheme().is_none().then(|| Path::new(&self.0))
    }

    /// `self/key`.
    pub fn join(&self, key: &str) -> Location {
        match self.as_path() {
            Some(p) => Location::path(&p.join(key)),
            None => Location(format!("{}/{}", self.0, key.trim_matches('/'))),
        }
    }

    /// The location with `{job}` replaced by the job's id.
    pub fn for_job(&self, job: &str) -> Location {
        Location(self.0.replace("{job}", job))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this location is `outer` or lies inside it. Paths and `file://`
    /// URLs are compared by their components, with `.` and `..` resolved and
    /// symbolic links followed as far as the path exists; other URLs by
    /// scheme, bucket or container, then prefix, segment by segment (`data2`
    /// is not inside `data`). A segment holding `{job}` and what follows it
    /// stand for any job's location: the prefix before it is compared.
    pub fn within(&self, outer: &Location) -> bool {
        let (mine, theirs) = (self.compared(), outer.compared());
        mine.0 == theirs.0 && mine.1.starts_with(&theirs.1)
    }

    /// What [`within`](Self::within) compares: the root (`""` for a path,
    /// `scheme://bucket` for a URL) and the segments under it.
    fn compared(&self) -> (String, Vec<String>) {
        let (root, segments) = match (self.scheme(), self.as_path()) {
            (None, Some(path)) => (String::new(), path_segments(path)),
            (Some("file"), _) => (String::new(), path_segments(Path::new(&self.0["file://".len()..]))),
            _ => {
                let (scheme, rest) = self.0.split_once("://").unwrap_or(("", &self.0));
                let mut parts = rest.split('/').filter(|s| !s.is_empty()).map(str::to_owned);
                let bucket = parts.next().unwrap_or_default();
                (format!("{scheme}://{bucket}"), parts.collect())
            }
        };
        let segments = segments.into_iter().take_while(|s| !s.contains("{job}")).collect();
        (root, segments)
    }
}

/// The components of `path`, absolute, with `.` and `..` resolved and links
/// followed in the part of it that exists.
fn path_segments(path: &Path) -> Vec<String> {
    // The longest existing ancestor, canonical; the rest as written.
    let mut existing = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut rest = Vec::new();
    let resolved = loop {
        if let Ok(real) = existing.canonicalize() {
            break real;
        }
        match (existing.file_name().map(|n| n.to_owned()), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_owned();
            }
            _ => break existing,
        }
    };
    let mut segments: Vec<String> = Vec::new();
    let joined = rest.into_iter().rev().fold(resolved, |p, n| p.join(n));
    for part in joined.components() {
        match part {
            std::path::Component::Normal(s) => segments.push(s.to_string_lossy().into_owned()),
            std::path::Component::ParentDir => {
                segments.pop();
            }
            std::path::Component::RootDir | std::path::Component::CurDir | std::path::Component::Prefix(_) => {}
        }
    }
    segments
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who is asking, for the credentials a remote store is signed with.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The job.
    pub job: String,
    /// The job's state location.
    pub state: String,
    /// The node (`bootstrap` for the bootstrap, `cli` for the command line).
    pub node: String,
}

/// A location opened for reading and writing.
#[derive(Clone)]
pub struct Store {
    location: Location,
    backend: Backend,
    /// On a local provider's node: the credential check a cloud's store makes.
    gate: Option<Arc<Gate>>,
}

#[derive(Clone)]
enum Backend {
    Local(PathBuf),
    Object { os: Arc<dyn ObjectStore>, prefix: ObjPath, refusals: OnRefusal },
}

/// Told of every error a remote store answers, so that a credential the
/// store refuses (expired or revoked before its time) is renewed before the
/// next request, whatever its age ([`ProviderCredentials::refused`]).
type OnRefusal = Option<Arc<dyn Fn(&object_store::Error) + Send + Sync>>;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("location", &self.location).finish()
    }
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn from_os(e: object_store::Error) -> io::Error {
    match e {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, e.to_string()),
        object_store::Error::AlreadyExists { .. } => io::Error::new(io::ErrorKind::AlreadyExists, e.to_string()),
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
            io::Error::new(io::ErrorKind::PermissionDenied, e.to_string())
        }
        e => io::Error::other(e.to_string()),
    }
}

/// [`block`] for a call that is itself an I/O result.
fn block_io<T: Send + 'static>(fut: impl Future<Output = io::Result<T>> + Send + 'static) -> io::Result<T> {
    block(fut)?
}

/// Runs `fut` on the provider runtime and waits for it (from any thread that
/// is not one of that runtime's own). `Err` when there is no runtime or the
/// call panicked (the panic is on stderr).
fn block<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> io::Result<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    crate::provider::runtime().map_err(io::Error::other)?.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().map_err(|_| io::Error::other(mayfly_model::error::Internal("a store call panicked (see the log)".into())))
}

impl Store {
    /// The local directory `path`.
    pub fn local(path: &Path) -> Store {
        Store { location: Location::path(path), backend: Backend::Local(path.to_owned()), gate: None }
    }

    /// Opens `location`: a local path as it is; `file://` with core's own
    /// client; any other scheme configured by `provider` (which must serve it)
    /// and signed with the credentials it issues to `who`. A path or `file://`
    /// opened by one of the local provider's nodes checks that node's
    /// credentials before every operation, as a cloud's store does ([`Gate`]).
    pub fn open(location: &Location, provider: &ProviderHandle, who: &Principal) -> Result<Store, OpenError> {
        let Some(scheme) = location.scheme() else {
            let gate = Gate::for_node(provider, &who.job, &who.state, &who.node).map(Arc::new);
            return Ok(Store { gate, ..Store::local(Path::new(location.as_str())) });
        };
        let url = location.as_str();
        if scheme == "file" {
            let dir = &url["file://".len()..];
            let directory = |source| OpenError::Directory { url: url.to_owned(), source };
            std::fs::create_dir_all(dir).map_err(directory)?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
                .map_err(|e| directory(io::Error::other(e)))?;
            return Ok(Store {
                location: location.clone(),
                backend: Backend::Object { os: Arc::new(fs), prefix: ObjPath::default(), refusals: None },
                gate: Gate::for_node(provider, &who.job, &who.state, &who.node).map(Arc::new),
            });
        }
        let config = {
            let p = provider.provider();
            let url = url.to_owned();
            let answer = block(async move { p.object_store(url).await });
            let url = location.as_str().to_owned();
            match answer {
                Ok(Ok(config)) => config,
                Ok(Err(source)) => return Err(OpenError::Provider { url, source }),
                Err(source) => return Err(OpenError::Call { url, source }),
            }
        };
        let (bucket_and_prefix, prefix) = match url.split_once("://").map(|(_, r)| r.split_once('/')) {
            Some(Some((bucket, prefix))) => (bucket.to_owned(), prefix.to_owned()),
            _ => (url.split_once("://").map(|(_, r)| r.to_owned()).unwrap_or_default(), String::new()),
        };
        let (os, refusals) = client(url, &config.scheme, &bucket_and_prefix, &config.options, provider, who)?;
        Ok(Store {
            location: location.clone(),
            backend: Backend::Object { os, prefix: join(&ObjPath::default(), &prefix), refusals },
            gate: None,
        })
    }

    /// Where this store is.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The local directory, if this store is one.
    pub fn local_dir(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Local(p) => Some(p),
            Backend::Object { .. } => None,
        }
    }

    /// How a key is named in messages.
    pub fn display(&self, key: &str) -> String {
        self.location.join(key).to_string()
    }

    /// The store rooted at `key`.
    pub fn sub(&self, key: &str) -> Store {
        let location = self.location.join(key);
        let backend = match &self.backend {
            Backend::Local(p) => Backend::Local(p.join(key)),
            Backend::Object { os, prefix, refusals } => {
                Backend::Object { os: os.clone(), prefix: join(prefix, key), refusals: refusals.clone() }
            }
        };
        Store { location, backend, gate: self.gate.clone() }
    }

    /// Has this store's credential check (on a local provider's node) take
    /// the credential the node holds and renews itself, so that the node and
    /// its stores agree on when it expires; every clone and [`Store::sub`] of
    /// this store shares it. No effect on a store without the check.
    pub fn present_credential(&self, presenter: crate::gate::Presenter) {
        if let Some(gate) = &self.gate {
            gate.present_with(presenter);
        }
    }

    /// Lets an operation through the node's credential check, if this store
    /// has one; `what` names it, for the refusal (made only then).
    fn admit(&self, what: impl FnOnce() -> String) -> io::Result<()> {
        match &self.gate {
            Some(gate) => gate.admit(what),
            None => Ok(()),
        }
    }

    fn local_path(root: &Path, key: &str) -> PathBuf {
        root.join(key)
    }

    /// How a remote store's error becomes this store's: the credentials are
    /// told of it first (see [`OnRefusal`]).
    fn os_error(&self) -> impl Fn(object_store::Error) -> io::Error + Clone + Send + Sync + 'static {
        let refusals = match &self.backend {
            Backend::Object { refusals, .. } => refusals.clone(),
            Backend::Local(_) => None,
        };
        move |e| {
            if let Some(told) = &refusals {
                told(&e);
            }
            from_os(e)
        }
    }

    /// Every object under `prefix` (`""`: all), with its size, by key, in order.
    pub fn list(&self, prefix: &str) -> io::Result<Vec<(String, u64)>> {
        self.admit(|| format!("listing {}", self.display(prefix)))?;
        let mut out = Vec::new();
        match &self.backend {
            Backend::Local(root) => {
                let start = if prefix.is_empty() { root.clone() } else { root.join(prefix) };
                let mut stack = vec![start];
                while let Some(dir) = stack.pop() {
                    let entries = match std::fs::read_dir(&dir) {
                        Ok(e) => e,
                        Err(e) if e.kind() == io::ErrorKind::NotFound && dir != root.as_path() => continue,
                        Err(e) => return Err(e),
                    };
                    for entry in entries {
                        let entry = entry?;
                        let path = entry.path();
                        let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
                        let meta = match std::fs::metadata(&path) {
                            Ok(m) => m,
                            // Gone between the listing and the look (a temporary
                            // file renamed into place): not an object. A dangling
                            // link is still there, and an error.
                            Err(e)
                                if e.kind() == io::ErrorKind::NotFound && std::fs::symlink_metadata(&path).is_err() =>
                            {
                                continue;
                            }
                            Err(e) => return Err(named(e)),
                        };
                        if meta.is_dir() {
                            stack.push(path);
                        } else if let Ok(rel) = path.strip_prefix(root) {
                            // A name that is not UTF-8 is no key: refused, not
                            // listed under a lossy name nobody can read back.
                            let key = rel.to_str().ok_or_else(|| {
                                io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    format!("{}: the name is not UTF-8, so it cannot be a key", path.display()),
                                )
                            })?;
                            out.push((key.to_owned(), meta.len()));
                        }
                    }
                }
            }
            Backend::Object { os, prefix: root, .. } => {
                let (os, root, at, err) = (os.clone(), root.clone(), join(root, prefix), self.os_error());
                out = block_io(async move {
                    let mut listing = os.list(Some(&at));
                    let mut out = Vec::new();
                    while let Some(meta) = listing.next().await {
                        let meta = meta.map_err(|e| match e {
                            // A key with a `.`, `..` or empty segment, or a
                            // control character: the store holds it, but it
                            // cannot be named to read it back.
                            object_store::Error::InvalidPath { source } => io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("an object has a key mayfly cannot read back by its name: {source}"),
                            ),
                            e => err(e),
                        })?;
                        let key = relative(&root, &meta.location);
                        out.push((key, meta.size));
                    }
                    Ok::<_, io::Error>(out)
                })?;
            }
        }
        out.sort();
        Ok(out)
    }

    /// Whether the store can be listed at all (a missing bucket, a refused
    /// credential or an unreachable endpoint says so here).
    pub fn check(&self) -> io::Result<()> {
        self.admit(|| format!("listing {}", self.location))?;
        match &self.backend {
            Backend::Local(root) => std::fs::read_dir(root).map(|_| ()),
            Backend::Object { os, prefix, .. } => {
                let (os, prefix, err) = (os.clone(), prefix.clone(), self.os_error());
                block_io(async move {
                    let mut listing = os.list(Some(&prefix));
                    match listing.next().await {
                        Some(Err(e)) => Err(err(e)),
                        _ => Ok(()),
                    }
                })
            }
        }
    }

    /// The object's size.
    pub fn size(&self, key: &str) -> io::Result<u64> {
        self.admit(|| format!("reading the size of {}", self.display(key)))?;
        match &self.backend {
            Backend::Local(root) => Ok(std::fs::metadata(Self::local_path(root, key))?.len()),
            Backend::Object { os, prefix, .. } => {
                let (os, at, err) = (os.clone(), join(prefix, key), self.os_error());
                block_io(async move { os.head(&at).await.map(|m| m.size).map_err(err) })
            }
        }
    }

    /// The object's bytes, or `None` if it does not exist.
    pub fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        self.admit(|| format!("reading {}", self.display(key)))?;
        let got = match &self.backend {
            Backend::Local(root) => std::fs::read(Self::local_path(root, key)),
            Backend::Object { os, prefix, .. } => {
                let (os, at, err) = (os.clone(), join(prefix, key), self.os_error());
                block_io(async move {
                    let r = os.get(&at).await.map_err(&err)?;
                    r.bytes().await.map(|b| b.to_vec()).map_err(&err)
                })
            }
        };
        match got {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the object exists.
    pub fn exists(&self, key: &str) -> bool {
        if self.admit(|| format!("reading {}", self.display(key))).is_err() {
            return false;
        }
        match &self.backend {
            Backend::Local(root) => Self::local_path(root, key).exists(),
            Backend::Object { .. } => self.size(key).is_ok(),
        }
    }

    /// Bytes `range` of the object.
    pub fn get_range(&self, key: &str, range: Range<u64>) -> io::Result<Vec<u8>> {
        self.admit(|| format!("reading {}", self.display(key)))?;
        match &self.backend {
            Backend::Local(root) => {
                use std::os::unix::fs::FileExt;
                let f = std::fs::File::open(Self::local_path(root, key))?;
                let mut buf = vec![0; (range.end - range.start) as usize];
                let mut at = 0;
                while at < buf.len() {
                    let n = f.read_at(&mut buf[at..], range.start + at as u64)?;
                    if n == 0 {
                        break;
                    }
                    at += n;
                }
                buf.truncate(at);
                Ok(buf)
            }
            Backend::Object { os, prefix, .. } => {
                let (os, at, err) = (os.clone(), join(prefix, key), self.os_error());
                let end = range.end;
                block_io(async move {
                    match os.get_range(&at, range).await {
                        Ok(b) => Ok(b.to_vec()),
                        // Stores answer a range that starts past the end with a
                        // generic error (S3's 416): if the object is now shorter
                        // than the range, say so, so that the item is known to
                        // have changed, not the store to have failed.
                        Err(e) => match os.head(&at).await {
                            Ok(meta) if meta.size < end => Err(io::Error::new(
                                io::ErrorKind::InvalidInput,
                                format!("range ends at byte {end}, past the end of the object ({} bytes)", meta.size),
                            )),
                            Err(head) if matches!(head, object_store::Error::NotFound { .. }) => Err(from_os(head)),
                            _ => Err(err(e)),
                        },
                    }
                })
            }
        }
    }

    /// Writes the object whole, atomically (readers see the old bytes or the
    /// new, never part), replacing any.
    pub fn put(&self, key: &str, bytes: Vec<u8>) -> io::Result<()> {
        self.admit(|| format!("writing {}", self.display(key)))?;
        match &self.backend {
            Backend::Local(root) => {
                let path = Self::local_path(root, key);
                let parent = path.parent().ok_or_else(|| other("no parent"))?;
                std::fs::create_dir_all(parent)?;
                let tmp = parent.join(format!(
                    ".{}.tmp-{}-{}",
                    path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
                    std::process::id(),
                    TMP_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                ));
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)
            }
            Backend::Object { os, prefix, .. } => {
                let (os, at, err) = (os.clone(), join(prefix, key), self.os_error());
                block_io(async move { os.put(&at, PutPayload::from(bytes)).await.map(|_| ()).map_err(err) })
            }
        }
    }

    /// Creates each object only if it does not exist yet (create-if-absent);
    /// each answer is `true` if this call created it, `false` if it was there.
    /// Local: each content durable first, one `syncfs` for the batch, then
    /// hard links; remote: conditional puts, concurrently.
    pub fn create_all(&self, items: Vec<(String, Vec<u8>)>) -> Vec<io::Result<bool>> {
        if let Err(e) = self.admit(|| format!("writing {} objects under {}", items.len(), self.location)) {
            return items.iter().map(|_| Err(io::Error::new(e.kind(), e.to_string()))).collect();
        }
        match &self.backend {
            Backend::Local(root) => create_all_local(root, items),
            Backend::Object { os, prefix, .. } => {
                let (os, prefix, err) = (os.clone(), prefix.clone(), self.os_error());
                let n = items.len();
                let done = block(async move {
                    let puts = items.into_iter().map(|(key, bytes)| {
                        let (os, at, err) = (os.clone(), join(&prefix, &key), err.clone());
                        async move {
                            let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
                            match os.put_opts(&at, PutPayload::from(bytes), opts).await {
                                Ok(_) => Ok(true),
                                Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                                Err(e) => Err(err(e)),
                            }
                        }
                    });
                    futures::stream::iter(puts).buffered(16).collect::<Vec<_>>().await
                });
                done.unwrap_or_else(|e| (0..n).map(|_| Err(io::Error::new(e.kind(), e.to_string()))).collect())
            }
        }
    }

    /// Makes everything written under a local store durable (one `syncfs`
    /// of its file system); an object store's writes are durable when they
    /// are answered, so there it does nothing.
    pub fn sync(&self) -> io::Result<()> {
        self.admit(|| format!("syncing {}", self.location))?;
        match &self.backend {
            Backend::Local(root) => {
                let dir = std::fs::File::open(root)?;
                nix::unistd::syncfs(&dir).map_err(io::Error::from)
            }
            Backend::Object { .. } => Ok(()),
        }
    }

    /// Moves an object (idempotent: done if `from` is gone and `to` is there).
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.admit(|| format!("moving {}", self.display(from)))?;
        let r = match &self.backend {
            Backend::Local(root) => {
                let to_path = Self::local_path(root, to);
                if let Some(parent) = to_path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::rename(Self::local_path(root, from), &to_path)
            }
            Backend::Object { os, prefix, .. } => {
                let (os, f, t, err) = (os.clone(), join(prefix, from), join(prefix, to), self.os_error());
                block_io(async move { os.rename(&f, &t).await.map_err(err) })
            }
        };
        match r {
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.exists(to) => Ok(()),
            r => r,
        }
    }

    /// Locally, moves the directory `from` to `to` in one rename, when `to`
    /// does not exist and `from` holds exactly the files `names` (nothing
    /// else, nothing nested); answers whether it did. Elsewhere (object stores
    /// have no directories), and when it cannot, `false`: the caller moves the
    /// files one by one.
    pub fn rename_dir_holding(&self, from: &str, to: &str, names: &[&str]) -> io::Result<bool> {
        self.admit(|| format!("moving {}", self.display(from)))?;
        let Backend::Local(root) = &self.backend else { return Ok(false) };
        let (from_path, to_path) = (Self::local_path(root, from), Self::local_path(root, to));
        if std::fs::symlink_metadata(&to_path).is_ok()
            || !std::fs::symlink_metadata(&from_path).is_ok_and(|m| m.file_type().is_dir())
        {
            return Ok(false);
        }
        let mut held = Vec::with_capacity(names.len());
        let Ok(entries) = std::fs::read_dir(&from_path) else { return Ok(false) };
        for entry in entries {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                return Ok(false);
            }
            held.push(entry.file_name());
        }
        let mut wanted: Vec<&std::ffi::OsStr> = names.iter().map(std::ffi::OsStr::new).collect();
        let mut held: Vec<&std::ffi::OsStr> = held.iter().map(|n| n.as_os_str()).collect();
        wanted.sort_unstable();
        held.sort_unstable();
        if wanted != held {
            return Ok(false);
        }
        if let Some(parent) = to_path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        match std::fs::rename(&from_path, &to_path) {
            Ok(()) => Ok(true),
            // Another publisher moved it first, or `to` appeared meanwhile.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty | io::ErrorKind::AlreadyExists
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes an object; one that is not there is no error.
    pub fn delete(&self, key: &str) -> io::Result<()> {
        self.admit(|| format!("deleting {}", self.display(key)))?;
        let r = match &self.backend {
            Backend::Local(root) => std::fs::remove_file(Self::local_path(root, key)),
            Backend::Object { os, prefix, .. } => {
                let (os, at, err) = (os.clone(), join(prefix, key), self.os_error());
                block_io(async move { os.delete(&at).await.map_err(err) })
            }
        };
        match r {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    /// Deletes everything under `prefix`.
    pub fn delete_prefix(&self, prefix: &str) -> io::Result<()> {
        self.admit(|| format!("deleting {}", self.display(prefix)))?;
        match &self.backend {
            Backend::Local(root) => match std::fs::remove_dir_all(Self::local_path(root, prefix)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
            Backend::Object { .. } => {
                for (key, _) in self.list(prefix)? {
                    self.delete(&key)?;
                }
                Ok(())
            }
        }
    }

    /// Copies a local file into the store.
    pub fn upload(&self, local: &Path, key: &str) -> io::Result<()> {
        match &self.backend {
            Backend::Local(root) => {
                let to = Self::local_path(root, key);
                if to == local {
                    return Ok(());
                }
                self.put(key, std::fs::read(local)?)
            }
            Backend::Object { .. } => self.put(key, std::fs::read(local)?),
        }
    }

    /// Copies every file under the local directory `dir` to `prefix/<its path>`.
    pub fn upload_dir(&self, dir: &Path, prefix: &str) -> io::Result<()> {
        for (rel, _) in Store::local(dir).list("")? {
            self.upload(&dir.join(&rel), &format!("{prefix}/{rel}"))?;
        }
        Ok(())
    }

    /// Copies an object to a local file (atomically).
    pub fn download(&self, key: &str, local: &Path) -> io::Result<()> {
        let bytes = self
            .get(key)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{} does not exist", self.display(key))))?;
        let dir = local.parent().ok_or_else(|| other("no parent"))?;
        Store::local(dir).put(&local.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), bytes)
    }

    /// The object (or bytes `start..start + len` of it) as a task's input,
    /// seen by the task as `name`.
    pub fn input(&self, key: &str, name: &str, range: Option<(u64, u64)>) -> io::Result<Arc<dyn InputSource>> {
        self.admit(|| format!("reading {}", self.display(key)))?;
        match &self.backend {
            Backend::Local(root) => {
                let path = Self::local_path(root, key);
                Ok(match range {
                    Some((start, len)) => Arc::new(mayfly_sandbox::FileInput::range(&path, name, start, len)?),
                    None => Arc::new(mayfly_sandbox::FileInput::open(&path, name)?),
                })
            }
            Backend::Object { .. } => {
                let size = self.size(key)?;
                let (start, len) = range.unwrap_or((0, size));
                if start.checked_add(len).is_none_or(|end| end > size) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("range {start}..{} lies past the end of the object ({size} bytes)", start + len),
                    ));
                }
                Ok(Arc::new(ObjectInput {
                    store: self.clone(),
                    key: key.to_owned(),
                    name: name.to_owned(),
                    start,
                    len,
                    window: Mutex::new((0, Vec::new())),
                }))
            }
        }
    }

    /// `items` of this store, read ahead of the task as a worker reads its
    /// shard's: each fetched whole by its range, or (too large to hold)
    /// opened to be read as the task goes.
    pub fn read_ahead(&self, items: Vec<mayfly_model::plan::Item>, config: ReadAheadConfig) -> ReadAhead {
        let (fetch_from, open_from) = (self.clone(), self.clone());
        ReadAhead::new(
            items,
            config,
            Arc::new(move |i: &mayfly_model::plan::Item| fetch_from.get_range(&i.object, i.start..i.start + i.len)),
            Arc::new(move |i: &mayfly_model::plan::Item| open_from.input(&i.object, &i.object, Some((i.start, i.len)))),
        )
    }

    /// Reads a JSON object, `None` if absent.
    pub fn read_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> io::Result<Option<T>> {
        match self.get(key)? {
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", self.display(key)))),
            None => Ok(None),
        }
    }

    /// Writes a JSON object atomically.
    pub fn write_json<T: serde::Serialize>(&self, key: &str, value: &T) -> io::Result<()> {
        self.put(key, serde_json::to_vec_pretty(value).map_err(other)?)
    }
}

static TMP_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn create_all_local(root: &Path, items: Vec<(String, Vec<u8>)>) -> Vec<io::Result<bool>> {
    use std::fs;
    // 1. Every content durable in a temporary file of its own, beside its target.
    let staged: Vec<io::Result<(PathBuf, PathBuf)>> = items
        .iter()
        .map(|(key, bytes)| {
            let target = root.join(key);
            let dir = target.parent().ok_or_else(|| other("no parent"))?;
            fs::create_dir_all(dir)?;
            // Unique per call and item: one batch may hold two claims on one key.
            let tmp = dir.join(format!(
                ".{}.tmp-{}-{}",
                target.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
                std::process::id(),
                TMP_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            fs::write(&tmp, bytes)?;
            Ok((tmp, target))
        })
        .collect();
    // 2. One sync makes all of them durable.
    let synced = fs::File::open(root).and_then(|dir| nix::unistd::syncfs(&dir).map_err(io::Error::from));
    // 3. Create-if-absent, atomically, with the content already durable.
    let mut dirs = std::collections::BTreeSet::new();
    let decided: Vec<io::Result<bool>> = staged
        .into_iter()
        .map(|r| {
            let (tmp, target) = r?;
            if let Err(e) = &synced {
                let _ = fs::remove_file(&tmp);
                return Err(io::Error::new(e.kind(), e.to_string()));
            }
            let linked = fs::hard_link(&tmp, &target);
            let _ = fs::remove_file(&tmp);
            if let Some(d) = target.parent() {
                dirs.insert(d.to_owned());
            }
            match linked {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            }
        })
        .collect();
    // 4. The links themselves, durable with a sync of their directories.
    for d in dirs {
        if let Ok(dir) = fs::File::open(d) {
            let _ = dir.sync_all();
        }
    }
    decided
}

/// `prefix/key` as the object's key, byte for byte (S3 keys may hold `#`, `%`,
/// spaces: listings give them raw, and so must every other call). Only a key
/// object_store cannot take raw (`.` or `..` parts, control characters) is
/// percent-encoded part by part instead.
fn join(prefix: &ObjPath, key: &str) -> ObjPath {
    let key = key.trim_matches('/');
    let raw = match (prefix.as_ref().is_empty(), key.is_empty()) {
        (_, true) => return prefix.clone(),
        (true, false) => key.to_owned(),
        (false, false) => format!("{}/{key}", prefix.as_ref()),
    };
    ObjPath::parse(&raw).unwrap_or_else(|_| {
        let mut out = prefix.clone();
        for part in key.split('/').filter(|p| !p.is_empty()) {
            out = out.clone().join(part);
        }
        out
    })
}

/// A listed object's key relative to `root`, raw, as [`join`] made it.
fn relative(root: &ObjPath, path: &ObjPath) -> String {
    match path.prefix_match(root) {
        Some(parts) => parts.map(|p| p.as_ref().to_owned()).collect::<Vec<_>>().join("/"),
        None => path.as_ref().to_owned(),
    }
}

/// A task's input read from an object store in ranged requests, a window of
/// [`ObjectInput::WINDOW`] bytes at a time.
struct ObjectInput {
    store: Store,
    key: String,
    name: String,
    start: u64,
    len: u64,
    /// The bytes last fetched, and where they start (relative to the item).
    window: Mutex<(u64, Vec<u8>)>,
}

impl ObjectInput {
    const WINDOW: u64 = 8 << 20;
}

impl InputSource for ObjectInput {
    fn name(&self) -> &str {
        &self.name
    }
    fn size(&self) -> u64 {
        self.len
    }
    fn offset_in_object(&self) -> u64 {
        self.start
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let (at, bytes) = &*window;
        let inside = offset >= *at && offset < *at + bytes.len() as u64;
        if !inside {
            let end = (offset + Self::WINDOW.max(buf.len() as u64)).min(self.len);
            let fetched = self.store.get_range(&self.key, self.start + offset..self.start + end)?;
            if fetched.is_empty() {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{} ended early", self.name)));
            }
            *window = (offset, fetched);
        }
        let (at, bytes) = &*window;
        let from = (offset - at) as usize;
        let n = buf.len().min(bytes.len() - from);
        buf[..n].copy_from_slice(&bytes[from..from + n]);
        Ok(n)
    }
}

// ------------------------------------------------------------------ S3

/// The client for a remote store the provider configured, and what its
/// credentials are told of its errors.
fn client(
    url: &str,
    scheme: &str,
    bucket: &str,
    options: &std::collections::BTreeMap<String, String>,
    provider: &ProviderHandle,
    who: &Principal,
) -> Result<(Arc<dyn ObjectStore>, OnRefusal), OpenError> {
    let url = url.to_owned();
    match scheme {
        #[cfg(feature = "s3")]
        "s3" => {
            let creds = Arc::new(ProviderCredentials::new(provider, who, "S3", s3_credential, "S3 keys"));
            let os = s3(url, bucket, options, provider, creds.clone())?;
            Ok((Arc::new(os), Some(ProviderCredentials::on_refusal(creds))))
        }
        #[cfg(not(feature = "s3"))]
        "s3" => {
            let _ = (bucket, options, who);
            Err(OpenError::NotBuiltIn { url, client: "S3", feature: "s3", artifact: "AWS" })
        }
        #[cfg(feature = "azure")]
        "az" => {
            let creds =
                Arc::new(ProviderCredentials::new(provider, who, "MicrosoftAzure", azure_credential, "a bearer token"));
            let os = azure(url, bucket, options, provider, creds.clone())?;
            Ok((Arc::new(os), Some(ProviderCredentials::on_refusal(creds))))
        }
        #[cfg(not(feature = "azure"))]
        "az" => {
            let _ = (bucket, options, who);
            Err(OpenError::NotBuiltIn { url, client: "Azure Blob", feature: "azure", artifact: "Azure" })
        }
        other => {
            let _ = (bucket, options, who);
            Err(OpenError::NoClient { url, provider: provider.name().to_owned(), scheme: other.to_owned() })
        }
    }
}

#[cfg(feature = "s3")]
fn s3(
    url: String,
    bucket: &str,
    options: &std::collections::BTreeMap<String, String>,
    provider: &ProviderHandle,
    creds: Arc<ProviderCredentials<object_store::aws::AwsCredential>>,
) -> Result<object_store::aws::AmazonS3, OpenError> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    let mut b = AmazonS3Builder::new().with_bucket_name(bucket);
    for (k, v) in options {
        let key: AmazonS3ConfigKey = k.parse().map_err(unknown_option(&url, provider, "S3", k))?;
        b = b.with_config(key, v);
    }
    b = b.with_credentials(creds).with_retry(retries());
    b.build().map_err(|source| OpenError::Client { url, source })
}

/// The error for an option `key` of the `client` that `provider` gave and the
/// client does not know.
#[cfg(any(feature = "s3", feature = "azure"))]
fn unknown_option<'a>(
    url: &'a str,
    provider: &'a ProviderHandle,
    client: &'static str,
    key: &'a str,
) -> impl FnOnce(object_store::Error) -> OpenError + 'a {
    move |e| OpenError::UnknownOption {
        url: url.to_owned(),
        provider: provider.name().to_owned(),
        client,
        key: key.to_owned(),
        reason: e.to_string(),
    }
}

/// How a remote store retries a request (throttling, a dropped connection).
#[cfg(any(feature = "s3", feature = "azure"))]
fn retries() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 4,
        retry_timeout: std::time::Duration::from_secs(30),
        ..Default::default()
    }
}

/// An Azure Blob container (`az://container/prefix`): the provider gives the
/// account (`azure_storage_account_name`) and, off Azure's public cloud, the
/// account's endpoint (`azure_storage_endpoint`, e.g. an emulator's
/// `https://127.0.0.1:10000/devstoreaccount1`); requests carry the bearer
/// token (Entra ID, scope `https://storage.azure.com/.default`) it issues.
#[cfg(feature = "azure")]
fn azure(
    url: String,
    container: &str,
    options: &std::collections::BTreeMap<String, String>,
    provider: &ProviderHandle,
    creds: Arc<ProviderCredentials<object_store::azure::AzureCredential>>,
) -> Result<object_store::azure::MicrosoftAzure, OpenError> {
    use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
    let mut b = MicrosoftAzureBuilder::new().with_container_name(container);
    for (k, v) in options {
        let key: AzureConfigKey = k.parse().map_err(unknown_option(&url, provider, "Azure", k))?;
        b = b.with_config(key, v);
    }
    b = b.with_credentials(creds).with_retry(retries());
    b.build().map_err(|source| OpenError::Client { url, source })
}

#[cfg(feature = "azure")]
/// An Azure Blob credential: an Entra ID access token for storage, sent as
/// `Authorization: Bearer`.
fn azure_credential(secret: &Secret) -> Option<object_store::azure::AzureCredential> {
    match secret {
        Secret::Bearer { token } if !token.is_empty() && !token.contains(char::is_whitespace) => {
            Some(object_store::azure::AzureCredential::BearerToken(token.clone()))
        }
        _ => None,
    }
}

#[cfg(any(feature = "s3", feature = "azure"))]
/// Signs a store's requests with credentials the provider issues, refreshed
/// by core's rule, and at once when the store refuses them
/// ([`ProviderCredentials::refused`]); a refresh that fails while the
/// current ones are still valid keeps them.
struct ProviderCredentials<C> {
    provider: ProviderHandle,
    who: Principal,
    policy: CredentialPolicy,
    /// object_store's name of the store, for errors.
    store: &'static str,
    parse: fn(&Secret) -> Option<C>,
    /// The kind of secret `parse` takes, for errors.
    form: &'static str,
    current: tokio::sync::Mutex<Option<(Arc<C>, Validity)>>,
    /// The store refused the current credential: renew it before the next request.
    stale: std::sync::atomic::AtomicBool,
    /// When the credential was last renewed because the store refused it (ms).
    renewed_at: std::sync::atomic::AtomicU64,
}

#[cfg(any(feature = "s3", feature = "azure"))]
impl<C> ProviderCredentials<C> {
    fn new(
        provider: &ProviderHandle,
        who: &Principal,
        store: &'static str,
        parse: fn(&Secret) -> Option<C>,
        form: &'static str,
    ) -> Self {
        ProviderCredentials {
            provider: provider.clone(),
            who: who.clone(),
            policy: CredentialPolicy::default(),
            store,
            parse,
            form,
            current: tokio::sync::Mutex::new(None),
            stale: std::sync::atomic::AtomicBool::new(false),
            renewed_at: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// How long after a renewal a refusal is taken to be of a request signed
    /// before it (requests in flight), not of the new credential.
    const SETTLE: Millis = 1000;

    /// Tells the credentials that the store answered `e`: when it says the
    /// credential is expired, revoked or unknown ([`refuses_credential`]),
    /// the next request renews it first, whatever its age. A credential can
    /// stop working before the expiry it was issued with (a session revoked,
    /// a node's clock that runs fast, a token service that shortened its
    /// life); keeping it to its renewal time would fail every request until
    /// then.
    fn refused(&self, e: &object_store::Error) {
        use std::sync::atomic::Ordering;
        let now = mayfly_provider_api::now_ms();
        if refuses_credential(e) && now.saturating_sub(self.renewed_at.load(Ordering::Relaxed)) >= Self::SETTLE {
            self.stale.store(true, Ordering::Relaxed);
        }
    }

    /// [`ProviderCredentials::refused`] as a store's [`OnRefusal`].
    fn on_refusal(creds: Arc<Self>) -> Arc<dyn Fn(&object_store::Error) + Send + Sync>
    where
        C: Send + Sync + 'static,
    {
        Arc::new(move |e| creds.refused(e))
    }
}

#[cfg(any(feature = "s3", feature = "azure"))]
/// Whether a store's error says the credential it was signed with is no
/// good: 401 (any store), or the error codes S3 and Blob storage give a
/// credential that has expired or that they do not know (S3 answers some with
/// 400 or 403, Blob storage with 403). A refusal by policy (`AccessDenied`,
/// `AuthorizationPermissionMismatch`) is not: a new credential of the same
/// identity would be refused too.
fn refuses_credential(e: &object_store::Error) -> bool {
    const CODES: [&str; 6] = [
        "<Code>ExpiredToken<",
        "<Code>InvalidToken<",
        "<Code>TokenRefreshRequired<",
        "<Code>InvalidAccessKeyId<",
        "<Code>InvalidAuthenticationInfo<",
        "<Code>AuthenticationFailed<",
    ];
    match e {
        object_store::Error::Unauthenticated { .. } => return true,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Generic { .. } => {}
        _ => return false,
    }
    // An answer without a body (to a HEAD) does not say why; the next
    // request with one does.
    let text = e.to_string();
    CODES.iter().any(|code| text.contains(code))
}

#[cfg(any(feature = "s3", feature = "azure"))]
impl<C> std::fmt::Debug for ProviderCredentials<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderCredentials").field("who", &self.who).finish()
    }
}

#[cfg(feature = "s3")]
/// An S3 credential: keys, and a session's token.
fn s3_credential(secret: &Secret) -> Option<object_store::aws::AwsCredential> {
    match secret {
        Secret::S3 { key_id, secret_key, session_token } if !key_id.is_empty() && !secret_key.is_empty() => {
            Some(object_store::aws::AwsCredential {
                key_id: key_id.clone(),
                secret_key: secret_key.clone(),
                // An empty token is none (long-lived keys).
                token: session_token.clone().filter(|t| !t.is_empty()),
            })
        }
        _ => None,
    }
}

#[cfg(any(feature = "s3", feature = "azure"))]
#[async_trait::async_trait]
impl<C: std::fmt::Debug + Send + Sync + 'static> object_store::CredentialProvider for ProviderCredentials<C> {
    type Credential = C;

    async fn get_credential(&self) -> object_store::Result<Arc<Self::Credential>> {
        use std::sync::atomic::Ordering;
        let mut current = self.current.lock().await;
        let now: Millis = mayfly_provider_api::now_ms();
        let refused = self.stale.swap(false, Ordering::Relaxed);
        if refused {
            self.renewed_at.store(now, Ordering::Relaxed);
        }
        if let Some((c, v)) = &*current
            && !refused
            && self.policy.action(now, *v, 0) == CredentialAction::Keep
        {
            return Ok(c.clone());
        }
        let request = mayfly_provider_api::CredentialRequest {
            job: self.who.job.clone(),
            state: self.who.state.clone(),
            node: self.who.node.clone(),
            refused,
        };
        let fresh = self.provider.provider().credentials(request).await;
        let generic = |message: String| object_store::Error::Generic { store: self.store, source: message.into() };
        match fresh {
            Ok(cred) => {
                let parsed = (self.parse)(&cred.secret).ok_or_else(|| {
                    generic(format!(
                        "the {} provider's credentials are {}, not {}",
                        self.provider.name(),
                        cred.secret.kind(),
                        self.form
                    ))
                })?;
                let parsed = Arc::new(parsed);
                *current = Some((parsed.clone(), cred.validity));
                Ok(parsed)
            }
            Err(e) => match &*current {
                Some((c, v)) if now < v.expires_at => Ok(c.clone()),
                _ => Err(generic(format!("credentials for the store: {e}"))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(any(feature = "s3", feature = "azure"))]
    #[test]
    fn a_credential_is_refused_by_401_or_a_code_for_expired_or_unknown_credentials_not_by_policy() {
        let status = |status: &str, code: &str| object_store::Error::Generic {
            store: "S3",
            source: format!(
                "Error performing PUT http://127.0.0.1/b/k: Server returned non-2xx status code: {status}: \
                 <?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>m</Message></Error>"
            )
            .into(),
        };
        let denied = |code: &str| object_store::Error::PermissionDenied {
            path: "k".into(),
            source: format!("<Error><Code>{code}</Code></Error>").into(),
        };
        assert!(refuses_credential(&status("400 Bad Request", "ExpiredToken")));
        assert!(refuses_credential(&status("400 Bad Request", "TokenRefreshRequired")));
        assert!(refuses_credential(&denied("InvalidAccessKeyId")));
        assert!(refuses_credential(&denied("AuthenticationFailed")));
        assert!(refuses_credential(&object_store::Error::Unauthenticated { path: "k".into(), source: "401".into() }));
        // Refused by policy, or not refused at all: a new credential would not help.
        assert!(!refuses_credential(&denied("AccessDenied")));
        assert!(!refuses_credential(&denied("AuthorizationPermissionMismatch")));
        assert!(!refuses_credential(&status("503 Service Unavailable", "SlowDown")));
        assert!(!refuses_credential(&object_store::Error::NotFound { path: "k".into(), source: "404".into() }));
    }

    #[test]
    fn a_local_name_that_is_not_utf8_fails_the_listing_naming_it() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("good.txt"), b"x").unwrap();
        std::fs::write(dir.path().join(std::ffi::OsStr::from_bytes(b"bad\xff.txt")), b"x").unwrap();
        let e = Store::local(dir.path()).list("").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("bad\u{FFFD}.txt: the name is not UTF-8, so it cannot be a key"), "{e}");
    }

    #[test]
    fn a_location_is_within_another_by_whole_segments_after_normalisation() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        std::fs::create_dir_all(base.join("data/sub")).unwrap();
        std::os::unix::fs::symlink(base.join("data/sub"), base.join("link")).unwrap();
        let at = |s: &str| Location::parse(s, base).unwrap();
        let file_url = |p: &str| at(&format!("file://{}", base.join(p).display()));
        // Paths: inside, equal, not a prefix of a segment, `..` and links resolved.
        assert!(at("data/out").within(&at("data")));
        assert!(at("data").within(&at("data")));
        assert!(!at("data2/out").within(&at("data")));
        assert!(!at("data").within(&at("data/out")));
        assert!(at("elsewhere/../data/new/out").within(&at("data")));
        assert!(at("link/out").within(&at("data")));
        // file:// and paths are the same place.
        assert!(file_url("data/out").within(&at("data")) && at("data/out").within(&file_url("data")));
        // URLs: scheme, bucket, then prefix segments.
        assert!(at("s3://b/in/out").within(&at("s3://b/in")) && at("s3://b/in").within(&at("s3://b")));
        assert!(!at("s3://b/input").within(&at("s3://b/in")));
        assert!(!at("s3://other/in/out").within(&at("s3://b/in")));
        assert!(!at("az://b/in/out").within(&at("s3://b/in")));
        assert!(!at("s3://b/in").within(&at("data")));
        // `{job}` stands for any job: the prefix before it is compared.
        assert!(at("s3://b/in/{job}/out").within(&at("s3://b/in")));
        assert!(at("data/runs/{job}").within(&at("data")));
    }

    #[test]
    fn locations_parse_and_refuse_what_is_not_one() {
        let base = Path::new("/jobs");
        assert_eq!(Location::parse("data", base).unwrap().as_str(), "/jobs/data");
        assert_eq!(Location::parse("/abs", base).unwrap().as_path(), Some(Path::new("/abs")));
        let s3 = Location::parse("s3://bucket/in/", base).unwrap();
        assert_eq!((s3.scheme(), s3.as_str()), (Some("s3"), "s3://bucket/in"));
        assert_eq!(s3.join("x/y").as_str(), "s3://bucket/in/x/y");
        assert!(Location::parse("s3://", base).unwrap_err().to_string().contains("expected s3://<bucket"));
        assert_eq!(Location::parse("file://rel", base), Err(LocationError::RelativeFile("file://rel".into())));
        assert!(
            matches!(Location::parse("S 3://x/y", base), Err(LocationError::Scheme { scheme, .. }) if scheme == "S 3")
        );
        assert_eq!(Location::parse("", base), Err(LocationError::Empty));
        let per_run = Location::parse("s3://b/out/{job}", base).unwrap();
        assert_eq!(per_run.for_job("wc-1").as_str(), "s3://b/out/wc-1");
    }

    #[cfg(feature = "s3")]
    #[test]
    fn s3_takes_s3_keys_only() {
        let keys = Secret::S3 { key_id: "AK".into(), secret_key: "SK".into(), session_token: Some("T:x".into()) };
        let c = s3_credential(&keys).unwrap();
        assert_eq!((c.key_id.as_str(), c.secret_key.as_str(), c.token.as_deref()), ("AK", "SK", Some("T:x")));
        assert!(s3_credential(&Secret::Bearer { token: "AK:SK".into() }).is_none());
        assert!(s3_credential(&Secret::Token { value: "AK:SK".into() }).is_none());
        let empty = Secret::S3 { key_id: "AK".into(), secret_key: String::new(), session_token: None };
        assert!(s3_credential(&empty).is_none(), "an empty secret key is no credential");
        let no_token = Secret::S3 { key_id: "AK".into(), secret_key: "SK".into(), session_token: Some(String::new()) };
        assert_eq!(s3_credential(&no_token).unwrap().token, None);
    }

    #[cfg(feature = "azure")]
    #[test]
    fn azure_takes_a_bearer_token_only() {
        let c = azure_credential(&Secret::Bearer { token: "eyJ".into() }).unwrap();
        assert!(matches!(c, object_store::azure::AzureCredential::BearerToken(t) if t == "eyJ"));
        assert!(azure_credential(&Secret::Token { value: "eyJ".into() }).is_none());
        assert!(azure_credential(&Secret::Bearer { token: " ".into() }).is_none());
    }

    fn both(dir: &Path) -> Vec<Store> {
        let local = Store::local(&dir.join("local"));
        std::fs::create_dir_all(dir.join("local")).unwrap();
        let url = Location::parse(&format!("file://{}", dir.join("remote").display()), dir).unwrap();
        let remote = Store::open(
            &url,
            &crate::provider::ProviderHandle::select(&Default::default()).unwrap(),
            &Principal { job: "j".into(), state: dir.display().to_string(), node: "t".into() },
        )
        .unwrap();
        vec![local, remote]
    }

    #[test]
    fn a_directory_moves_whole_only_when_it_holds_exactly_the_named_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::local(dir.path());
        s.put("st/k/a.tsv", b"a".to_vec()).unwrap();
        s.put("st/k/b.tsv", b"b".to_vec()).unwrap();
        // An unnamed extra file, a missing name, a nested entry: not moved.
        assert!(!s.rename_dir_holding("st/k", "map/k", &["a.tsv"]).unwrap());
        assert!(!s.rename_dir_holding("st/k", "map/k", &["a.tsv", "b.tsv", "c.tsv"]).unwrap());
        s.put("st/n/sub/x", b"x".to_vec()).unwrap();
        assert!(!s.rename_dir_holding("st/n", "map/n", &["sub"]).unwrap());
        // The destination already there: not moved, nothing overwritten.
        s.put("map/j/a.tsv", b"old".to_vec()).unwrap();
        s.put("st/j/a.tsv", b"new".to_vec()).unwrap();
        assert!(!s.rename_dir_holding("st/j", "map/j", &["a.tsv"]).unwrap());
        assert_eq!(s.get("map/j/a.tsv").unwrap().unwrap(), b"old");
        // Exactly the files, destination absent (its parent too): moved whole.
        assert!(s.rename_dir_holding("st/k", "map/deep/k", &["b.tsv", "a.tsv"]).unwrap());
        assert_eq!(s.get("map/deep/k/a.tsv").unwrap().unwrap(), b"a");
        assert_eq!(s.get("map/deep/k/b.tsv").unwrap().unwrap(), b"b");
        assert!(!dir.path().join("st/k").exists());
        // Again (already moved): `false`, so the caller's file-by-file move
        // finds each file in place.
        assert!(!s.rename_dir_holding("st/k", "map/deep/k", &["a.tsv", "b.tsv"]).unwrap());
        s.rename("st/k/a.tsv", "map/deep/k/a.tsv").unwrap();
    }

    #[test]
    fn local_and_object_stores_behave_alike() {
        let dir = tempfile::tempdir().unwrap();
        for s in both(dir.path()) {
            let what = s.location().to_string();
            s.put("a/b.txt", b"hello world".to_vec()).unwrap();
            s.put("c.txt", b"c".to_vec()).unwrap();
            assert_eq!(s.list("").unwrap(), vec![("a/b.txt".into(), 11), ("c.txt".into(), 1)], "{what}");
            // Keys come back from a listing as they were named (a split item's key has a `#`).
            s.put("x/f.txt#0-756/copy.bin", b"12".to_vec()).unwrap();
            s.put("x/100% a.txt", b"3".to_vec()).unwrap();
            let listed = s.list("x").unwrap();
            assert_eq!(listed, vec![("x/100% a.txt".into(), 1), ("x/f.txt#0-756/copy.bin".into(), 2)], "{what}");
            for (key, _) in listed {
                assert!(s.get(&key).unwrap().is_some(), "{what}: {key} reads back by its listed name");
            }
            s.delete_prefix("x").unwrap();
            assert_eq!(s.list("a").unwrap(), vec![("a/b.txt".into(), 11)], "{what}");
            assert_eq!(s.get_range("a/b.txt", 6..11).unwrap(), b"world", "{what}");
            assert_eq!(s.get("nope").unwrap(), None, "{what}");
            let created = s.create_all(vec![("m/1".into(), b"x".to_vec()), ("c.txt".into(), b"y".to_vec())]);
            let created: Vec<bool> = created.into_iter().map(|r| r.unwrap()).collect();
            assert_eq!(created, vec![true, false], "{what}: create-if-absent");
            assert_eq!(s.get("c.txt").unwrap().unwrap(), b"c", "{what}: the loser changes nothing");
            s.rename("a/b.txt", "z/b.txt").unwrap();
            s.rename("a/b.txt", "z/b.txt").unwrap();
            assert!(!s.exists("a/b.txt") && s.exists("z/b.txt"), "{what}");
            let input = s.input("z/b.txt", "b", Some((6, 5))).unwrap();
            let mut buf = [0u8; 16];
            let n = input.read_at(0, &mut buf).unwrap();
            assert_eq!(&buf[..n], b"world", "{what}");
            assert_eq!(input.read_at(5, &mut buf).unwrap(), 0, "{what}");
            assert!(s.input("z/b.txt", "b", Some((6, 6))).is_err(), "{what}: past the end");
            // A range past the end (an object shorter than when it was listed)
            // reads short (read-ahead then says the object changed); one that
            // starts past the end reads nothing locally and is refused
            // remotely as the input's fault, never as the store failing.
            assert_eq!(s.get_range("z/b.txt", 6..12).unwrap(), b"world", "{what}");
            let past = s.get_range("z/b.txt", 20..24);
            if s.local_dir().is_some() {
                assert_eq!(past.unwrap(), b"", "{what}");
            } else {
                assert_eq!(past.unwrap_err().kind(), io::ErrorKind::InvalidInput, "{what}");
            }
            let gone = s.get_range("z/none.txt", 0..1).unwrap_err();
            assert_eq!(gone.kind(), io::ErrorKind::NotFound, "{what}: {gone}");
            s.delete_prefix("z").unwrap();
            s.delete("c.txt").unwrap();
            s.delete("c.txt").unwrap();
            assert_eq!(s.list("").unwrap(), vec![("m/1".into(), 1)], "{what}");
        }
    }
}
