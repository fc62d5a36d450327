//! The on-disk cache of compiled components.
//!
//! Compiling a component with Cranelift takes from tens of milliseconds to
//! seconds; a worker must pay that once per task, not once per item, and a
//! node that restarts should not pay it again. Entries are keyed by the
//! sha256 of the wasm bytes plus wasmtime's compatibility hash of the engine
//! (its version and every setting that affects code generation), so a cached
//! artifact is only ever loaded into an engine that could have produced it.
//!
//! Rejected alternative: wasmtime's own `cache` feature. It keys entries
//! itself, reads a TOML config from the user's home, and compresses in a
//! background thread; we want the key stated by us, one directory we check,
//! and no surprises on a node that deletes itself an hour later.

use std::fs;
use std::hash::Hasher;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::CacheRefused;

/// Feeds `std::hash::Hash` output into sha256, to turn the engine's
/// compatibility hash into stable bytes.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        0 // unused: the digest is read from the inner hasher
    }
}

/// The hex sha256 of the engine's compatibility hash.
pub(crate) fn engine_key(engine: &Engine) -> String {
    let mut hasher = Sha256Hasher(Sha256::new());
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
    hex::encode(hasher.0.finalize())
}

/// A directory of compiled components.
#[derive(Debug, Clone)]
pub(crate) struct CompileCache {
    dir: PathBuf,
}

impl CompileCache {
    /// Opens (creating if needed, mode 0700) the cache at `dir`. Refuses a
    /// directory that someone else owns or could write to: its files are
    /// loaded as machine code.
    pub(crate) fn open(dir: &Path) -> Result<Self, CacheRefused> {
        let unusable = |source| CacheRefused::Unusable { dir: dir.to_owned(), source };
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(unusable)?;
        let meta = fs::metadata(dir).map_err(unusable)?;
        // std has no geteuid: compare the owner with that of a file we create.
        let probe = dir.join(format!(".owner-{}", std::process::id()));
        fs::write(&probe, b"").map_err(unusable)?;
        let me = fs::metadata(&probe).map(|m| m.uid());
        let _ = fs::remove_file(&probe);
        if me.ok() != Some(meta.uid()) {
            return Err(CacheRefused::OtherOwner(dir.to_owned()));
        }
        if meta.permissions().mode() & 0o022 != 0 {
            return Err(CacheRefused::Writable(dir.to_owned()));
        }
        Ok(CompileCache { dir: dir.to_owned() })
    }

    fn path(&self, wasm_sha256: &str, engine_key: &str) -> PathBuf {
        self.dir.join(format!("{wasm_sha256}-{}.cwasm", &engine_key[..16]))
    }

    /// The cached compilation of the wasm whose sha256 is given, if any.
    pub(crate) fn load(&self, engine: &Engine, wasm_sha256: &str, engine_key: &str) -> Option<Component> {
        let path = self.path(wasm_sha256, engine_key);
        // Read, not mmap (`deserialize_file`): a file truncated under a mapping
        // kills the process with SIGBUS, and a damaged entry must only cost a
        // recompilation.
        let bytes = fs::read(&path).ok()?;
        #[allow(unsafe_code)]
        // SAFETY: `deserialize` trusts the bytes to be a compilation made by a
        // compatible wasmtime. Files here are written only by `store` below, from
        // `Component::serialize` of an engine with the same compatibility hash
        // (part of the name), via a temporary file renamed into place, in a
        // directory `open` verified to be ours and not writable by others.
        // wasmtime still checks the header, version and settings before use.
        let loaded = unsafe { Component::deserialize(engine, &bytes) };
        match loaded {
            Ok(component) => Some(component),
            Err(_) => {
                // A stale or damaged entry: drop it and compile afresh.
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores a compiled component. Failures only cost a recompilation later.
    pub(crate) fn store(&self, component: &Component, wasm_sha256: &str, engine_key: &str) {
        let Ok(bytes) = component.serialize() else { return };
        let path = self.path(wasm_sha256, engine_key);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_all()));
        if written.is_err() || fs::rename(&tmp, &path).is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }
}

/// Where the cache lives by default: `$MAYFLY_CACHE_DIR/components`, else
/// `$XDG_CACHE_HOME/mayfly/components`, else `~/.cache/mayfly/components`.
pub fn default_cache_dir() -> Option<PathBuf> {
    default_cache_root().map(|root| root.join("components"))
}

/// mayfly's cache directory, where the compiled tasks and the tools mayfly
/// installs itself live: `$MAYFLY_CACHE_DIR`, else `$XDG_CACHE_HOME/mayfly`,
/// else `~/.cache/mayfly`.
pub fn default_cache_root() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("MAYFLY_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("mayfly"));
    }
    std::env::var_os("HOME").filter(|d| !d.is_empty()).map(|h| PathBuf::from(h).join(".cache/mayfly"))
}
