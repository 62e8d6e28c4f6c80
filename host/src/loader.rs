//! Loading plugins from a plugins directory laid out as
//! `<dir>/<tenant>/<plugin>.wasm` with an optional `<plugin>.toml` beside
//! each component.
//!
//! Every refusal is a [`LoadError`] that names the file and the reason;
//! one plugin's refusal never stops the others from loading.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use crate::bindings::Pre;
use crate::dispatch::{Plugin, PluginParts};
use crate::manifest::{Manifest, ManifestError, NameError, validate_name};
use crate::sandbox::{Identity, PluginState};

/// Why a plugin (or a file in the plugins directory) was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file or directory could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A tenant directory's name is not a valid tenant name.
    #[error("{}: invalid tenant name {name:?}: {reason}", path.display())]
    TenantName {
        /// The directory.
        path: PathBuf,
        /// The name.
        name: String,
        /// Why it is invalid.
        reason: NameError,
    },
    /// A component's file name is not a valid plugin name.
    #[error("{}: invalid plugin name {name:?}: {reason}", path.display())]
    PluginName {
        /// The file.
        path: PathBuf,
        /// The name.
        name: String,
        /// Why it is invalid.
        reason: NameError,
    },
    /// A symbolic link points outside the plugins directory.
    #[error("{}: a symbolic link that leaves the plugins directory (to {})", path.display(), target.display())]
    SymlinkEscape {
        /// The link.
        path: PathBuf,
        /// Where it points.
        target: PathBuf,
    },
    /// A file sits where a tenant directory belongs.
    #[error("{}: plugins belong in a tenant's directory: <plugins-dir>/<tenant>/<plugin>.wasm", path.display())]
    Misplaced {
        /// The file.
        path: PathBuf,
    },
    /// A manifest has no component beside it.
    #[error("{}: a manifest without its component (expected {})", path.display(), expected.display())]
    OrphanManifest {
        /// The manifest.
        path: PathBuf,
        /// Where the component was expected.
        expected: PathBuf,
    },
    /// A manifest does not parse or is invalid.
    #[error("{}: invalid manifest: {reason}", path.display())]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// Why it is invalid.
        reason: ManifestError,
    },
    /// A component file is larger than the host accepts.
    #[error("{}: {size} bytes is more than the limit of {limit} bytes for a plugin", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The file is not WebAssembly at all.
    #[error("{}: not a WebAssembly component (the file does not start with the wasm magic bytes \\0asm)", path.display())]
    NotWasm {
        /// The file.
        path: PathBuf,
    },
    /// The file is a core WebAssembly module, not a component.
    #[error("{}: a core WebAssembly module, not a component; build the plugin for wasm32-wasip2", path.display())]
    CoreModule {
        /// The file.
        path: PathBuf,
    },
    /// The component is malformed or uses features the host does not allow.
    #[error("{}: invalid component: {reason}", path.display())]
    Compile {
        /// The file.
        path: PathBuf,
        /// wasmtime's reason.
        reason: String,
    },
    /// The component or its manifest changed while it was being read: a
    /// writer is still at work. It is read again once the files settle.
    #[error("{}: the file changed while it was read (still being written?); it will be read again when it settles", path.display())]
    Changing {
        /// The file.
        path: PathBuf,
    },
    /// The component compiled, but could not be instantiated under its
    /// limits (a start function that traps, memory over the limit).
    #[error("{}: cannot be instantiated under its limits: {reason}", path.display())]
    Instantiate {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The component does not target the world `plugbus:plugin/handler`.
    #[error("{}: does not match the world plugbus:plugin/handler@0.2.0 (nor 0.1.0): {reason}", path.display())]
    WrongWorld {
        /// The file.
        path: PathBuf,
        /// What does not match.
        reason: String,
    },
}

impl LoadError {
    /// The file or directory the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::Io { path, .. }
            | Self::TenantName { path, .. }
            | Self::PluginName { path, .. }
            | Self::SymlinkEscape { path, .. }
            | Self::Misplaced { path }
            | Self::OrphanManifest { path, .. }
            | Self::Manifest { path, .. }
            | Self::TooLarge { path, .. }
            | Self::NotWasm { path }
            | Self::CoreModule { path }
            | Self::Compile { path, .. }
            | Self::Changing { path }
            | Self::Instantiate { path, .. }
            | Self::WrongWorld { path, .. } => path,
        }
    }
}

/// A plugin found on disk, before it is read and compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The tenant directory's name.
    pub tenant: String,
    /// The plugin's name (the component's file stem).
    pub name: String,
    /// `<tenant>/<plugin>.wasm`.
    pub wasm: PathBuf,
    /// `<tenant>/<plugin>.toml`, if it exists.
    pub manifest: Option<PathBuf>,
}

/// Finds the plugins of a plugins directory: every `<tenant>/<plugin>.wasm`
/// whose names are valid and whose files stay inside the directory.
/// Hidden entries (names starting with `.`) are skipped.
pub fn scan(root: &Path) -> Result<(Vec<Candidate>, Vec<LoadError>), std::io::Error> {
    let root = root.canonicalize()?;
    let mut candidates = Vec::new();
    let mut errors = Vec::new();
    for entry in sorted_entries(&root)? {
        let Some(name) = visible_name(&entry) else {
            continue;
        };
        let is_dir = match resolve(&root, &entry) {
            Ok(meta) => meta.is_dir(),
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        if !is_dir {
            if has_extension(&entry, "wasm") || has_extension(&entry, "toml") {
                errors.push(LoadError::Misplaced { path: entry });
            }
            continue;
        }
        if let Err(reason) = validate_name(&name) {
            errors.push(LoadError::TenantName {
                path: entry,
                name,
                reason,
            });
            continue;
        }
        scan_tenant(&root, &entry, &name, &mut candidates, &mut errors);
    }
    Ok((candidates, errors))
}

fn scan_tenant(
    root: &Path,
    dir: &Path,
    tenant: &str,
    candidates: &mut Vec<Candidate>,
    errors: &mut Vec<LoadError>,
) {
    let entries = match sorted_entries(dir) {
        Ok(entries) => entries,
        Err(source) => {
            errors.push(LoadError::Io {
                path: dir.to_owned(),
                source,
            });
            return;
        }
    };
    for path in entries {
        if visible_name(&path).is_none() {
            continue;
        }
        let is_wasm = has_extension(&path, "wasm");
        let is_toml = has_extension(&path, "toml");
        if !is_wasm && !is_toml {
            continue;
        }
        match resolve(root, &path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => continue,
            Err(e) => {
                errors.push(e);
                continue;
            }
        }
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if is_toml {
            let wasm = path.with_extension("wasm");
            if !wasm.exists() {
                errors.push(LoadError::OrphanManifest {
                    path,
                    expected: wasm,
                });
            }
            continue;
        }
        if let Err(reason) = validate_name(&stem) {
            errors.push(LoadError::PluginName {
                path,
                name: stem,
                reason,
            });
            continue;
        }
        let manifest = path.with_extension("toml");
        let manifest = match resolve(root, &manifest) {
            Ok(meta) if meta.is_file() => Some(manifest),
            Ok(_) => None,
            Err(LoadError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                None
            }
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        candidates.push(Candidate {
            tenant: tenant.to_owned(),
            name: stem,
            wasm: path,
            manifest,
        });
    }
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut entries = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?;
    entries.sort();
    Ok(entries)
}

fn visible_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_string_lossy().into_owned();
    (!name.starts_with('.')).then_some(name)
}

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension().is_some_and(|e| e == ext)
}

/// The metadata of what `path` names, after checking that a symbolic link
/// (anywhere along it) does not lead outside `root`.
fn resolve(root: &Path, path: &Path) -> Result<std::fs::Metadata, LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_owned(),
        source,
    };
    let link = std::fs::symlink_metadata(path).map_err(io)?;
    if link.file_type().is_symlink() {
        let target = path.canonicalize().map_err(io)?;
        if !target.starts_with(root) {
            return Err(LoadError::SymlinkEscape {
                path: path.to_owned(),
                target,
            });
        }
    }
    std::fs::metadata(path).map_err(io)
}

/// What compiling a plugin needs from the host.
pub(crate) struct LoadContext<'a> {
    pub engine: &'a Engine,
    pub linker: &'a Linker<PluginState>,
    pub defaults: crate::manifest::Limits,
    pub max_plugin_bytes: u64,
    pub bounds: &'a Arc<crate::sandbox::Bounds>,
    pub stats: &'a Arc<crate::stats::Stats>,
    pub mode: crate::dispatch::InstanceMode,
    pub epoch_tick: std::time::Duration,
    pub fuel_metered: bool,
    pub concurrency: usize,
    pub cache: Option<&'a crate::cache::CompileCache>,
}

/// Components compiled during one load, by the SHA-256 of their bytes: a
/// component that several plugins share (the same handler for a thousand
/// tenants) is compiled once, and its code shared in memory.
pub(crate) type Compiled = std::collections::HashMap<[u8; 32], Component>;

/// What identifies the state of a file on disk without reading it: a writer
/// that replaces or rewrites it changes at least one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
    changed_ns: i64,
}

impl Stamp {
    /// The stamp of `path`, following symbolic links.
    fn of(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(path)?;
        Ok(Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode: meta.ino(),
            changed_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        })
    }
}

/// The stamps of a plugin's files: its component and its manifest.
pub(crate) type Stamps = (Option<Stamp>, Option<Stamp>);

/// The stamps of a candidate's files; a file that cannot be read has none.
pub(crate) fn stamps(candidate: &Candidate) -> Stamps {
    (
        Stamp::of(&candidate.wasm).ok(),
        candidate
            .manifest
            .as_deref()
            .and_then(|m| Stamp::of(m).ok()),
    )
}

/// A plugin's files, read and checked, before compilation.
pub(crate) struct Source {
    manifest: Manifest,
    bytes: Vec<u8>,
    digest: [u8; 32],
    /// The SHA-256 of the component's SHA-256 and the manifest's text: two
    /// sources with the same fingerprint are the same version.
    pub fingerprint: [u8; 32],
    /// The files' stamps, the same before and after they were read.
    pub stamps: Stamps,
}

impl Source {
    /// The plugin's manifest, defaults filled in.
    pub(crate) fn manifest(&self) -> &Manifest {
        &self.manifest
    }
}

/// Reads a plugin's manifest and component, refusing a file that changes
/// while it is read.
pub(crate) fn read(ctx: &LoadContext<'_>, candidate: &Candidate) -> Result<Source, LoadError> {
    let before = stamps(candidate);
    let (manifest_text, manifest) = match &candidate.manifest {
        None => (String::new(), Manifest::with_defaults(ctx.defaults)),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
                path: path.clone(),
                source,
            })?;
            let manifest =
                Manifest::parse(&text, ctx.defaults).map_err(|reason| LoadError::Manifest {
                    path: path.clone(),
                    reason,
                })?;
            (text, manifest)
        }
    };
    let bytes = read_component(&candidate.wasm, ctx.max_plugin_bytes)?;
    let after = stamps(candidate);
    if before != after {
        let path = if before.0 == after.0 {
            candidate.manifest.clone()
        } else {
            None
        };
        return Err(LoadError::Changing {
            path: path.unwrap_or_else(|| candidate.wasm.clone()),
        });
    }
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    Ok(Source {
        manifest,
        bytes,
        digest,
        fingerprint: fingerprint(&digest, manifest_text.as_bytes()),
        stamps: after,
    })
}

/// Compiles (or takes from `compiled` or the compile cache) a plugin's
/// component, checks it against the world `handler`, and instantiates it
/// once under its limits, so that a plugin that is returned is ready.
pub(crate) fn build(
    ctx: &LoadContext<'_>,
    compiled: &mut Compiled,
    candidate: &Candidate,
    source: Source,
) -> Result<(Plugin, crate::cache::CompileSource), LoadError> {
    use crate::cache::CompileSource;
    let path = &candidate.wasm;
    let compile_error = |e: wasmtime::Error| LoadError::Compile {
        path: path.clone(),
        reason: format!("{e:#}"),
    };
    let (component, origin) = match compiled.get(&source.digest) {
        Some(component) => (component.clone(), CompileSource::Compiled),
        None => {
            let (component, origin) = match ctx.cache {
                Some(cache) => cache
                    .load_or_compile(ctx.engine, &source.digest, &source.bytes)
                    .map_err(compile_error)?,
                None => (
                    Component::from_binary(ctx.engine, &source.bytes).map_err(compile_error)?,
                    CompileSource::Compiled,
                ),
            };
            compiled.insert(source.digest, component.clone());
            (component, origin)
        }
    };
    let instance_pre =
        ctx.linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::WrongWorld {
                path: path.clone(),
                reason: format!("{e:#}"),
            })?;
    let pre = Pre::new(instance_pre).map_err(|e| LoadError::WrongWorld {
        path: path.clone(),
        reason: format!("{e:#}"),
    })?;
    let identity = Arc::new(Identity {
        tenant: candidate.tenant.clone(),
        name: candidate.name.clone(),
        label: format!("{}/{}", candidate.tenant, candidate.name),
        source: format!("plugbus://{}/{}", candidate.tenant, candidate.name),
        version: version_of(&source.fingerprint),
        config: source.manifest.config.clone(),
    });
    // Only the current version's batch layout is served.
    let batch_export = matches!(pre, Pre::V0_2(_))
        .then(|| component.get_export_index(None, "handle-batch"))
        .flatten();
    let plugin = Plugin::new(PluginParts {
        identity,
        manifest: source.manifest,
        path: path.clone(),
        engine: ctx.engine.clone(),
        pre,
        bounds: ctx.bounds.clone(),
        stats: ctx.stats.clone(),
        mode: ctx.mode,
        epoch_tick: ctx.epoch_tick,
        fuel_metered: ctx.fuel_metered,
        concurrency: ctx.concurrency,
        batch_export,
    });
    plugin.warm_up().map_err(|failure| LoadError::Instantiate {
        path: path.clone(),
        reason: failure.message,
    })?;
    Ok((plugin, origin))
}

/// Reads a component file, refusing one over `limit` bytes and anything
/// that is not a component before handing it to the compiler.
fn read_component(path: &Path, limit: u64) -> Result<Vec<u8>, LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_owned(),
        source,
    };
    let too_large = |size| LoadError::TooLarge {
        path: path.to_owned(),
        size,
        limit,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size > limit {
        return Err(too_large(size));
    }
    // The file may grow while it is read: read at most one byte past the limit.
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    std::io::Read::read_to_end(&mut std::io::Read::take(file, limit + 1), &mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Err(LoadError::CoreModule {
            path: path.to_owned(),
        }),
        Some([0, b'a', b's', b'm', ..]) => Ok(bytes),
        _ => Err(LoadError::NotWasm {
            path: path.to_owned(),
        }),
    }
}

/// `component` with a custom section `name` of `len` filler bytes appended:
/// the same code, so the same behaviour, but other bytes, so another
/// version, and as large as wanted. For tests and benchmarks of reloads.
pub fn with_custom_section(component: &[u8], name: &str, len: usize) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut body = Vec::with_capacity(len + name.len() + 5);
    leb128(name.len(), &mut body);
    body.extend_from_slice(name.as_bytes());
    body.resize(body.len() + len, 0x5a);
    let mut out = component.to_vec();
    out.push(0); // the id of a custom section
    leb128(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

/// The SHA-256 of a component's SHA-256 and its manifest's text.
fn fingerprint(component_digest: &[u8; 32], manifest: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(component_digest);
    hasher.update(manifest);
    hasher.finalize().into()
}

/// A plugin's version: the first 12 hex digits of its fingerprint.
fn version_of(fingerprint: &[u8; 32]) -> String {
    fingerprint
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_cover_component_and_manifest() {
        let component: [u8; 32] = Sha256::digest(b"\0asm").into();
        let other: [u8; 32] = Sha256::digest(b"\0asn").into();
        let version = |digest, manifest| version_of(&fingerprint(digest, manifest));
        let a = version(&component, b"");
        assert_eq!(a.len(), 12);
        assert_eq!(a, version(&component, b""));
        assert_ne!(a, version(&component, b"subscribe = []"));
        assert_ne!(a, version(&other, b""));
    }

    #[test]
    fn scan_refuses_bad_names_and_escaping_links() -> Result<(), Box<dyn std::error::Error>> {
        let outside = tempfile::tempdir()?;
        std::fs::write(outside.path().join("secret.wasm"), b"\0asm")?;
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        std::fs::create_dir_all(root.join("acme/sub"))?;
        std::fs::create_dir_all(root.join("Bad Tenant"))?;
        std::fs::create_dir_all(root.join(".hidden"))?;
        std::fs::write(root.join("acme/good.wasm"), b"")?;
        std::fs::write(root.join("acme/good.toml"), b"")?;
        std::fs::write(root.join("acme/Bad.wasm"), b"")?;
        std::fs::write(root.join("acme/orphan.toml"), b"")?;
        std::fs::write(root.join("acme/notes.txt"), b"")?;
        std::fs::write(root.join("stray.wasm"), b"")?;
        std::os::unix::fs::symlink(
            outside.path().join("secret.wasm"),
            root.join("acme/leak.wasm"),
        )?;
        std::os::unix::fs::symlink(root.join("acme/good.wasm"), root.join("acme/alias.wasm"))?;
        std::os::unix::fs::symlink(outside.path(), root.join("evil"))?;

        let (found, errors) = scan(root)?;
        let names: Vec<_> = found.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["alias", "good"]);
        assert!(found[1].manifest.is_some());
        assert!(found[0].manifest.is_none());
        let mut kinds: Vec<_> = errors
            .iter()
            .map(|e| {
                let file = e
                    .path()
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned());
                (
                    std::mem::discriminant(e),
                    file.unwrap_or_default(),
                    e.to_string(),
                )
            })
            .collect();
        kinds.sort_by(|a, b| a.1.cmp(&b.1));
        let files: Vec<_> = kinds.iter().map(|k| k.1.as_str()).collect();
        assert_eq!(
            files,
            [
                "Bad Tenant",
                "Bad.wasm",
                "evil",
                "leak.wasm",
                "orphan.toml",
                "stray.wasm"
            ]
        );
        for (_, file, message) in &kinds {
            assert!(message.contains(file.as_str()), "{message} names {file}");
        }
        assert!(
            errors
                .iter()
                .any(|e| matches!(e, LoadError::SymlinkEscape { .. }))
        );
        Ok(())
    }
}
