//! The compile cache: compiled components on disk, by the SHA-256 of the
//! component and the engine's settings, so that a restart or a revert to an
//! earlier version of a plugin skips compilation.
//!
//! Deserializing compiled code runs it without any check, so the cache only
//! ever trusts files it wrote itself: the directory is created private to
//! the host's user (mode 0700) and refused if anyone else may write to it,
//! it must not lie inside the plugins directory that tenants write to, and
//! each entry carries the SHA-256 of its contents, checked before the code
//! is handed to wasmtime. An entry that fails the check — truncated,
//! corrupted, or written by an incompatible engine — is deleted and the
//! component compiled again.

use std::hash::{Hash as _, Hasher as _};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The first bytes of every cache entry.
const MAGIC: &[u8; 16] = b"plugbus-cwasm-1\n";

/// Why the compile cache cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The directory cannot be created or read.
    #[error("compile cache {}: {source}", path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Someone other than the host's user may write to the directory, so
    /// its entries could have been planted.
    #[error(
        "compile cache {}: writable by other users (mode {mode:o}, owner uid {owner}); it must be private to the host's user",
        path.display()
    )]
    NotPrivate {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Its owner.
        owner: u32,
    },
}

/// Where a compiled component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CompileSource {
    /// Compiled now; the cache is off.
    Compiled,
    /// Found in the cache.
    CacheHit,
    /// Not in the cache: compiled now, and written to it.
    CacheMiss,
    /// The cache held an entry that failed its check: it was deleted and
    /// the component compiled again.
    CacheCorrupt,
    /// Compiled once for another plugin loading the same component at the
    /// same time (two tenants' same component), and shared.
    Shared,
}

/// The compile cache's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Components found in the cache.
    pub hits: u64,
    /// Components compiled because the cache did not have them.
    pub misses: u64,
    /// Entries deleted because they failed their check.
    pub discarded: u64,
    /// Entries that could not be written (the component was used anyway).
    pub write_errors: u64,
}

/// A directory of compiled components.
#[derive(Debug)]
pub struct CompileCache {
    dir: PathBuf,
    /// Hex of the engine's compatibility hash: entries of other engine
    /// settings or wasmtime versions have other names.
    engine_key: String,
    hits: AtomicU64,
    misses: AtomicU64,
    discarded: AtomicU64,
    write_errors: AtomicU64,
}

impl CompileCache {
    /// Opens (creating it private if needed) the cache directory for
    /// components compiled by `engine`.
    pub fn open(dir: &Path, engine: &Engine) -> Result<Self, CacheError> {
        let io = |source| CacheError::Io {
            path: dir.to_owned(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode_private()
            .create(dir)
            .map_err(io)?;
        check_private(dir)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self {
            dir: dir.canonicalize().map_err(io)?,
            engine_key: format!("{:016x}", hasher.finish()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
        })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cache's counters.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            discarded: self.discarded.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
        }
    }

    /// The entry of the component whose bytes hash to `digest`.
    pub fn entry_path(&self, digest: &[u8; 32]) -> PathBuf {
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{hex}-{}.cwasm", self.engine_key))
    }

    /// Whether the cache holds an entry for the component whose bytes hash
    /// to `digest` (not checked: loading it may still find it corrupt).
    pub fn contains(&self, digest: &[u8; 32]) -> bool {
        self.entry_path(digest).is_file()
    }

    /// The compiled component of `bytes` (whose SHA-256 is `digest`): from
    /// the cache when it holds a sound entry, compiled (and stored) when not.
    /// Fails only when compiling fails.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        digest: &[u8; 32],
        bytes: &[u8],
    ) -> Result<(Component, CompileSource), wasmtime::Error> {
        let path = self.entry_path(digest);
        let mut source = CompileSource::CacheMiss;
        match std::fs::read(&path) {
            Ok(entry) => match self.deserialize(engine, &entry) {
                Ok(component) => {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok((component, CompileSource::CacheHit));
                }
                Err(reason) => {
                    tracing::warn!(
                        entry = %path.display(),
                        "compile cache entry discarded: {reason}"
                    );
                    self.discarded.fetch_add(1, Ordering::Relaxed);
                    source = CompileSource::CacheCorrupt;
                    if let Err(e) = std::fs::remove_file(&path) {
                        tracing::warn!(entry = %path.display(), "cannot delete it: {e}");
                    }
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(entry = %path.display(), "cannot read compile cache entry: {e}")
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let component = Component::from_binary(engine, bytes)?;
        if let Err(e) = self.store(&path, &component) {
            self.write_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(entry = %path.display(), "cannot write compile cache entry: {e:#}");
        }
        Ok((component, source))
    }

    /// Checks an entry's framing and checksum, then hands its code to
    /// wasmtime, which checks the engine's version and settings.
    fn deserialize(&self, engine: &Engine, entry: &[u8]) -> Result<Component, String> {
        let rest = entry
            .strip_prefix(MAGIC.as_slice())
            .ok_or("not a plugbus compile cache entry")?;
        let (sum, code) = rest.split_at_checked(32).ok_or("truncated")?;
        if Sha256::digest(code).as_slice() != sum {
            return Err("checksum mismatch: the entry is corrupt".into());
        }
        deserialize_own(engine, code).map_err(|e| format!("{e:#}"))
    }

    /// Writes an entry atomically: to a temporary file in the cache
    /// directory, then renamed into place. It is not fsynced: a crash may
    /// leave an empty or partial entry, which fails its checksum and is
    /// compiled again, so the sync would only slow every cache miss.
    fn store(&self, path: &Path, component: &Component) -> Result<(), anyhow::Error> {
        let code = component
            .serialize()
            .map_err(|e| anyhow::anyhow!("cannot serialize the compiled code: {e:#}"))?;
        let mut file = tempfile::NamedTempFile::new_in(&self.dir)?;
        file.write_all(MAGIC)?;
        file.write_all(&Sha256::digest(&code))?;
        file.write_all(&code)?;
        file.persist(path)?;
        Ok(())
    }
}

/// Deserializes compiled code that this host wrote.
#[allow(unsafe_code)]
fn deserialize_own(engine: &Engine, code: &[u8]) -> Result<Component, wasmtime::Error> {
    // SAFETY: `code` is the body of an entry that passed its SHA-256 check,
    // in a directory that only the host's user can write (checked when the
    // cache was opened) and that lies outside the tenants' plugins
    // directory: the host itself wrote it with `Component::serialize`.
    // wasmtime then checks that it was compiled by a compatible engine.
    unsafe { Component::deserialize(engine, code) }
}

/// Refuses a directory that another user may write to.
fn check_private(dir: &Path) -> Result<(), CacheError> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(dir).map_err(|source| CacheError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mode = meta.mode() & 0o7777;
    let owner = meta.uid();
    let me = own_uid(dir)?;
    if mode & 0o022 != 0 || owner != me {
        return Err(CacheError::NotPrivate {
            path: dir.to_owned(),
            mode,
            owner,
        });
    }
    Ok(())
}

/// The host's effective user id, read as the owner of a file it creates
/// (which needs no `unsafe` call to `geteuid`).
fn own_uid(dir: &Path) -> Result<u32, CacheError> {
    use std::os::unix::fs::MetadataExt as _;
    let probe = tempfile::tempfile_in(dir).map_err(|source| CacheError::Io {
        path: dir.to_owned(),
        source,
    })?;
    probe
        .metadata()
        .map(|m| m.uid())
        .map_err(|source| CacheError::Io {
            path: dir.to_owned(),
            source,
        })
}

/// `DirBuilder::mode(0o700)`, behind a name that reads as what it is for.
trait PrivateDir {
    fn mode_private(&mut self) -> &mut Self;
}

impl PrivateDir for std::fs::DirBuilder {
    fn mode_private(&mut self) -> &mut Self {
        std::os::unix::fs::DirBuilderExt::mode(self, 0o700)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_others_can_write_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt as _;
        let engine = Engine::default();
        let dir = tempfile::tempdir()?;
        let cache = dir.path().join("cache");
        CompileCache::open(&cache, &engine)?;
        let mode = std::fs::metadata(&cache)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777))?;
        let err = CompileCache::open(&cache, &engine).unwrap_err();
        assert!(matches!(err, CacheError::NotPrivate { .. }), "{err}");
        assert!(err.to_string().contains("writable by other users"), "{err}");
        Ok(())
    }

    #[test]
    fn entries_that_fail_their_check_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let engine = Engine::default();
        let dir = tempfile::tempdir()?;
        let cache = CompileCache::open(dir.path(), &engine)?;
        for (entry, reason) in [
            (b"garbage".to_vec(), "not a plugbus"),
            (MAGIC.to_vec(), "truncated"),
            ([MAGIC.as_slice(), &[0; 32], b"code"].concat(), "checksum"),
            (
                [
                    MAGIC.as_slice(),
                    Sha256::digest(b"code").as_slice(),
                    b"code",
                ]
                .concat(),
                "",
            ),
        ] {
            let err = cache.deserialize(&engine, &entry).unwrap_err();
            assert!(err.contains(reason), "{err}");
        }
        Ok(())
    }
}
