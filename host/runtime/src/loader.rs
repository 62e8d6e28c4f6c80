//! Loading plugins from a plugins directory laid out as
//! `<dir>/<tenant>/<plugin>.wasm` with an optional `<plugin>.toml` beside
//! each component.
//!
//! Every refusal is a [`LoadError`] that names the file and the reason;
//! one plugin's refusal never stops the others from loading.
//!
//! # What a tenant's folder may hold
//!
//! Everything in a tenant's folder is the tenant's, and hostile. A plugin's
//! files must resolve inside its own tenant's folder:
//! - A tenant folder that is a symbolic link is refused ([`LoadError::TenantSymlink`]),
//!   even one that points at another tenant's folder. (The plugins directory
//!   itself is the operator's: it may be a symbolic link.)
//! - A component or manifest that is a symbolic link is followed only while
//!   it stays inside the tenant's folder: a relative link such as
//!   `alias.wasm -> v2/handler.wasm` is served; a link whose target is
//!   absolute, or climbs out through `..` (even to come back), is refused as
//!   [`LoadError::OutsideTenant`], as is a link into a subfolder that is
//!   itself a link out.
//! - Only regular files are read: a FIFO, socket or device where a component
//!   or manifest belongs is refused ([`LoadError::NotRegularFile`]), never
//!   waited on.
//! - Manifests are at most [`HostConfig::max_manifest_bytes`](crate::HostConfig::max_manifest_bytes)
//!   bytes and components [`HostConfig::max_plugin_bytes`](crate::HostConfig::max_plugin_bytes)
//!   ([`LoadError::TooLarge`]).
//!
//! Each file is opened once, beneath its tenant's folder (with
//! `openat2(RESOLVE_BENEATH)` where the kernel has it, through `cap-std`),
//! without blocking; its type and size are checked on the opened handle, its
//! bytes are read from that same handle, and the plugin's version is the hash
//! of exactly those bytes. A hard link is a regular file: whoever can make
//! one could read the file anyway.

use std::ffi::OsStr;
use std::io::Read as _;
use std::path::{Component as PathPart, Path, PathBuf};
use std::sync::Arc;

use cap_fs_ext::{DirExt as _, OpenOptionsSyncExt as _};
use cap_std::fs::{Dir, OpenOptions};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use crate::bindings::Pre;
use crate::dispatch::{Plugin, PluginParts};
use crate::sandbox::{Identity, PluginState};
use plugbus_core::manifest::{Limits, Manifest, ManifestError, NameError, validate_name};

/// Which of a plugin's two files an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// The component, `<plugin>.wasm`.
    Component,
    /// The manifest, `<plugin>.toml`.
    Manifest,
}

impl FileKind {
    /// The `plugbus.toml` setting of this file's size limit.
    pub fn size_setting(self) -> &'static str {
        match self {
            Self::Component => "limits.max.plugin_bytes",
            Self::Manifest => "limits.max.manifest_bytes",
        }
    }
}

impl std::fmt::Display for FileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Component => "component",
            Self::Manifest => "manifest",
        })
    }
}

/// The reasons of [`LoadError::reason`]: the values of the `reason` label
/// of the `plugbus_plugins_refused_total` counter.
pub const REFUSAL_REASONS: [&str; 16] = [
    "io",
    "invalid_name",
    "tenant_symlink",
    "outside_tenant",
    "not_regular_file",
    "misplaced",
    "orphan_manifest",
    "invalid_manifest",
    "too_large",
    "limit_ceiling",
    "outbound_ceiling",
    "quota",
    "not_a_component",
    "compile",
    "instantiate",
    "wrong_world",
];

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
        #[source]
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
        #[source]
        reason: NameError,
    },
    /// A tenant's folder is a symbolic link: a tenant could point it at
    /// another tenant's folder.
    #[error(
        "{}: a tenant folder may not be a symbolic link (it points to {}); put the folder itself in the plugins directory",
        path.display(),
        target.display()
    )]
    TenantSymlink {
        /// The link.
        path: PathBuf,
        /// Where it points.
        target: PathBuf,
    },
    /// A plugin's file resolves outside its tenant's folder: through a
    /// symbolic link that is absolute, climbs out with `..`, or leads into
    /// another tenant's folder.
    #[error(
        "{}: a symbolic link that leaves the tenant folder {tenant}/ (it points to {}); a plugin's files must stay inside its own tenant's folder, linked only by relative links that never climb out of it",
        path.display(),
        target.display()
    )]
    OutsideTenant {
        /// The file.
        path: PathBuf,
        /// The tenant whose folder it leaves.
        tenant: String,
        /// Where its link points.
        target: PathBuf,
        /// What the file system said when it was opened.
        #[source]
        source: std::io::Error,
    },
    /// A FIFO, socket, device or directory where a component or manifest
    /// belongs: only regular files are read.
    #[error("{}: the {kind} is {what}, not a regular file; only regular files are read", path.display())]
    NotRegularFile {
        /// The file.
        path: PathBuf,
        /// Which file of the plugin it is.
        kind: FileKind,
        /// What it is instead ("a FIFO", "a socket", ...).
        what: &'static str,
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
        #[source]
        reason: ManifestError,
    },
    /// A component or manifest is larger than the host accepts.
    #[error(
        "{}: the {kind} is {size} bytes, more than the limit of {limit} bytes ({} in plugbus.toml)",
        path.display(),
        kind.size_setting()
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Which file of the plugin it is.
        kind: FileKind,
        /// Its size (at least; reading stops one byte past the limit).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A manifest asks for more than the operator's ceiling of a limit.
    #[error(
        "{}: {key} is {value}; the operator's ceiling is {ceiling} ({setting} in plugbus.toml)",
        path.display()
    )]
    LimitCeiling {
        /// The manifest.
        path: PathBuf,
        /// The manifest's key (`limits.fuel`, ...).
        key: &'static str,
        /// The value it asks for.
        value: u64,
        /// The ceiling.
        ceiling: u64,
        /// The operator's setting of the ceiling (`limits.max.fuel`, ...).
        setting: &'static str,
    },
    /// A manifest's `[http] allow` names an origin that its tenant's
    /// ceiling does not cover.
    #[error(
        "{}: http.allow entry {entry:?} is not covered by tenant {tenant}'s ceiling (tenants.{tenant}.outbound.allow in plugbus.toml)",
        path.display()
    )]
    OutboundCeiling {
        /// The manifest.
        path: PathBuf,
        /// The tenant.
        tenant: String,
        /// The entry, in its canonical form.
        entry: String,
    },
    /// The tenant already has as many plugins as its quota allows.
    #[error(
        "{}: tenant {tenant} already has its quota of {quota} plugins ({setting} in plugbus.toml); this plugin is not loaded",
        path.display()
    )]
    Quota {
        /// The plugin's component.
        path: PathBuf,
        /// The tenant.
        tenant: String,
        /// Its quota of plugins.
        quota: usize,
        /// The operator's setting of the quota (`quotas.max_plugins` or
        /// `tenants.<tenant>.max_plugins`).
        setting: String,
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
            | Self::TenantSymlink { path, .. }
            | Self::OutsideTenant { path, .. }
            | Self::NotRegularFile { path, .. }
            | Self::Misplaced { path }
            | Self::OrphanManifest { path, .. }
            | Self::Manifest { path, .. }
            | Self::TooLarge { path, .. }
            | Self::LimitCeiling { path, .. }
            | Self::OutboundCeiling { path, .. }
            | Self::Quota { path, .. }
            | Self::NotWasm { path }
            | Self::CoreModule { path }
            | Self::Compile { path, .. }
            | Self::Changing { path }
            | Self::Instantiate { path, .. }
            | Self::WrongWorld { path, .. } => path,
        }
    }

    /// The kind of refusal, one of [`REFUSAL_REASONS`], as the `reason`
    /// label of `plugbus_plugins_refused_total`; `None` for
    /// [`LoadError::Changing`], which is no refusal: the files are read
    /// again once they settle.
    pub fn reason(&self) -> Option<&'static str> {
        Some(match self {
            Self::Io { .. } => "io",
            Self::TenantName { .. } | Self::PluginName { .. } => "invalid_name",
            Self::TenantSymlink { .. } => "tenant_symlink",
            Self::OutsideTenant { .. } => "outside_tenant",
            Self::NotRegularFile { .. } => "not_regular_file",
            Self::Misplaced { .. } => "misplaced",
            Self::OrphanManifest { .. } => "orphan_manifest",
            Self::Manifest { .. } => "invalid_manifest",
            Self::TooLarge { .. } => "too_large",
            Self::LimitCeiling { .. } => "limit_ceiling",
            Self::OutboundCeiling { .. } => "outbound_ceiling",
            Self::Quota { .. } => "quota",
            Self::NotWasm { .. } | Self::CoreModule { .. } => "not_a_component",
            Self::Compile { .. } => "compile",
            Self::Instantiate { .. } => "instantiate",
            Self::WrongWorld { .. } => "wrong_world",
            Self::Changing { .. } => return None,
        })
    }
}

/// Why the host's loading settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// A ceiling is below the default of the same limit, so that a plugin
    /// without a manifest would be refused.
    #[error(
        "the ceiling {setting} is {ceiling}, below the default {default_setting} of {default}; a ceiling must be at least the default"
    )]
    CeilingBelowDefault {
        /// The ceiling's setting (`limits.max.fuel`, ...).
        setting: &'static str,
        /// The ceiling, in the setting's unit.
        ceiling: u64,
        /// The default's setting (`limits.fuel`, ...).
        default_setting: &'static str,
        /// The default, in the setting's unit.
        default: u64,
    },
    /// A per-tenant quota names something that is not a tenant name, so
    /// it could never apply.
    #[error("tenants.{tenant:?}.max_plugins: {tenant:?} is not a valid tenant name: {reason}")]
    QuotaTenant {
        /// The name.
        tenant: String,
        /// Why it is invalid.
        #[source]
        reason: NameError,
    },
}

/// The tenants' quotas of loaded plugins, part of the host's configuration
/// ([`HostConfig::max_plugins_per_tenant`](crate::HostConfig::max_plugins_per_tenant)
/// and [`HostConfig::tenant_max_plugins`](crate::HostConfig::tenant_max_plugins)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginQuotas {
    /// The quota of a tenant not in `tenants`.
    pub per_tenant: usize,
    /// Quotas by tenant name, in place of `per_tenant`.
    pub tenants: std::collections::BTreeMap<String, usize>,
}

impl PluginQuotas {
    /// A tenant's quota of plugins, and the setting it comes from.
    pub fn of(&self, tenant: &str) -> (usize, String) {
        match self.tenants.get(tenant) {
            Some(quota) => (*quota, format!("tenants.{tenant}.max_plugins")),
            None => (self.per_tenant, "quotas.max_plugins".to_owned()),
        }
    }
}

/// Checks the loading settings: every ceiling of `max_limits` at least
/// the default limit of `defaults`, and every tenant of `quotas` a valid
/// tenant name.
pub fn check_settings(
    defaults: &Limits,
    max_limits: &Limits,
    quotas: &PluginQuotas,
) -> Result<(), SettingsError> {
    if let Some(above) = defaults.above(max_limits) {
        return Err(SettingsError::CeilingBelowDefault {
            setting: above.setting,
            ceiling: above.ceiling,
            default_setting: above.key,
            default: above.value,
        });
    }
    for tenant in quotas.tenants.keys() {
        validate_name(tenant).map_err(|reason| SettingsError::QuotaTenant {
            tenant: tenant.clone(),
            reason,
        })?;
    }
    Ok(())
}

/// Splits `candidates` by their tenants' quotas of plugins (`quota` of a
/// tenant): the plugins `held` (those that serve, or are being built) keep
/// their places first, then the others take the places left in the order
/// of their names. Returns the candidates within the quotas, by tenant and
/// name, and those past them.
pub(crate) fn split_by_quota(
    candidates: Vec<Candidate>,
    held: impl Fn(&Candidate) -> bool,
    quota: impl Fn(&str) -> usize,
) -> (Vec<Candidate>, Vec<Candidate>) {
    type Queues = (Vec<Candidate>, Vec<Candidate>);
    let mut tenants: std::collections::BTreeMap<String, Queues> = std::collections::BTreeMap::new();
    for candidate in candidates {
        let queues = tenants.entry(candidate.tenant.clone()).or_default();
        if held(&candidate) {
            queues.0.push(candidate);
        } else {
            queues.1.push(candidate);
        }
    }
    let mut admitted = Vec::new();
    let mut refused = Vec::new();
    for (tenant, (mut first, mut then)) in tenants {
        first.sort_by(|a, b| a.name.cmp(&b.name));
        then.sort_by(|a, b| a.name.cmp(&b.name));
        let places = quota(&tenant);
        for (i, candidate) in first.into_iter().chain(then).enumerate() {
            if i < places {
                admitted.push(candidate);
            } else {
                refused.push(candidate);
            }
        }
    }
    admitted.sort_by(|a, b| (&a.tenant, &a.name).cmp(&(&b.tenant, &b.name)));
    (admitted, refused)
}

/// A plugin found on disk, before it is read and compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The plugins directory, canonical.
    pub root: PathBuf,
    /// The tenant directory's name.
    pub tenant: String,
    /// The plugin's name (the component's file stem).
    pub name: String,
    /// `<root>/<tenant>/<plugin>.wasm`.
    pub wasm: PathBuf,
    /// `<root>/<tenant>/<plugin>.toml`, if there is an entry of that name.
    pub manifest: Option<PathBuf>,
}

/// Finds the plugins of a plugins directory: every `<tenant>/<plugin>.wasm`
/// whose names are valid, in tenant folders that are real folders (not
/// symbolic links). Hidden entries (names starting with `.`) are skipped.
/// Whether a plugin's files stay inside its tenant's folder, and are
/// regular files, is checked when they are opened ([`Candidate`]s are
/// names, not files).
pub fn scan(root: &Path) -> Result<(Vec<Candidate>, Vec<LoadError>), std::io::Error> {
    let root = root.canonicalize()?;
    let dir = Dir::open_ambient_dir(&root, cap_std::ambient_authority())?;
    let mut candidates = Vec::new();
    let mut errors = Vec::new();
    for (name, file_type) in sorted_entries(&dir)? {
        let Some(shown) = visible_name(&name) else {
            continue;
        };
        let path = root.join(&name);
        if file_type.is_symlink() {
            // Only to word the refusal: nothing is read through the link.
            if std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
                errors.push(LoadError::TenantSymlink {
                    target: link_target(&dir, &name),
                    path,
                });
            } else if has_extension(&name, "wasm") || has_extension(&name, "toml") {
                errors.push(LoadError::Misplaced { path });
            }
            continue;
        }
        if !file_type.is_dir() {
            if has_extension(&name, "wasm") || has_extension(&name, "toml") {
                errors.push(LoadError::Misplaced { path });
            }
            continue;
        }
        if let Err(reason) = validate_name(&shown) {
            errors.push(LoadError::TenantName {
                path,
                name: shown,
                reason,
            });
            continue;
        }
        match open_tenant(&root, &shown) {
            Ok(tenant_dir) => scan_tenant(&root, &tenant_dir, &shown, &mut candidates, &mut errors),
            Err(e) => errors.push(e),
        }
    }
    Ok((candidates, errors))
}

fn scan_tenant(
    root: &Path,
    dir: &Dir,
    tenant: &str,
    candidates: &mut Vec<Candidate>,
    errors: &mut Vec<LoadError>,
) {
    let tenant_path = root.join(tenant);
    let entries = match sorted_entries(dir) {
        Ok(entries) => entries,
        Err(source) => {
            errors.push(LoadError::Io {
                path: tenant_path,
                source,
            });
            return;
        }
    };
    let names: std::collections::HashSet<&OsStr> =
        entries.iter().map(|(n, _)| n.as_os_str()).collect();
    for (name, file_type) in &entries {
        if visible_name(name).is_none() {
            continue;
        }
        let is_wasm = has_extension(name, "wasm");
        let is_toml = has_extension(name, "toml");
        if !is_wasm && !is_toml {
            continue;
        }
        // A folder named like a plugin's file is no file: skip it, as
        // before. Anything else is a candidate and checked when opened.
        let is_dir = file_type.is_dir()
            || (file_type.is_symlink() && dir.metadata(name).is_ok_and(|m| m.is_dir()));
        if is_dir {
            continue;
        }
        let path = tenant_path.join(name);
        let stem = Path::new(name)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if is_toml {
            let wasm = Path::new(name).with_extension("wasm");
            if !names.contains(wasm.as_os_str()) {
                errors.push(LoadError::OrphanManifest {
                    expected: tenant_path.join(wasm),
                    path,
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
        let manifest = Path::new(name).with_extension("toml");
        let manifest = names
            .contains(manifest.as_os_str())
            .then(|| tenant_path.join(manifest));
        candidates.push(Candidate {
            root: root.to_owned(),
            tenant: tenant.to_owned(),
            name: stem,
            wasm: path,
            manifest,
        });
    }
}

/// The entries of `dir` by name, with their types (of the entry itself, a
/// symbolic link not followed).
fn sorted_entries(dir: &Dir) -> std::io::Result<Vec<(std::ffi::OsString, cap_std::fs::FileType)>> {
    let mut entries = dir
        .entries()?
        .map(|e| e.and_then(|e| Ok((e.file_name(), e.file_type()?))))
        .collect::<Result<Vec<_>, _>>()?;
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}

fn visible_name(name: &OsStr) -> Option<String> {
    let name = name.to_string_lossy().into_owned();
    (!name.starts_with('.')).then_some(name)
}

fn has_extension(name: &OsStr, ext: &str) -> bool {
    Path::new(name).extension().is_some_and(|e| e == ext)
}

/// Where the symbolic link `name` in `dir` points, as written; empty when
/// it cannot be read (it is only shown in a refusal).
fn link_target(dir: &Dir, name: &OsStr) -> PathBuf {
    dir.read_link_contents(name).unwrap_or_default()
}

/// Opens the folder of `tenant` in `root`, refusing a symbolic link.
fn open_tenant(root: &Path, tenant: &str) -> Result<Dir, LoadError> {
    let path = root.join(tenant);
    let root_dir = Dir::open_ambient_dir(root, cap_std::ambient_authority()).map_err(|source| {
        LoadError::Io {
            path: root.to_owned(),
            source,
        }
    })?;
    root_dir.open_dir_nofollow(tenant).map_err(|source| {
        let is_link = root_dir
            .symlink_metadata(tenant)
            .is_ok_and(|m| m.file_type().is_symlink());
        if is_link {
            LoadError::TenantSymlink {
                target: link_target(&root_dir, OsStr::new(tenant)),
                path,
            }
        } else {
            LoadError::Io { path, source }
        }
    })
}

/// Whether a symbolic link's target, as written, leaves the folder the link
/// is in: an absolute target, or one whose `..` climb above that folder at
/// any point (even to come back).
pub fn link_leaves_folder(target: &Path) -> bool {
    let mut depth = 0usize;
    for part in target.components() {
        match part {
            PathPart::Prefix(_) | PathPart::RootDir => return true,
            PathPart::CurDir => {}
            PathPart::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return true,
            },
            PathPart::Normal(_) => depth += 1,
        }
    }
    false
}

/// What a file of this type is, for a refusal; `None` for a regular file.
fn irregular(file_type: std::fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt as _;
    describe([
        (file_type.is_fifo(), "a FIFO"),
        (file_type.is_socket(), "a socket"),
        (file_type.is_char_device(), "a character device"),
        (file_type.is_block_device(), "a block device"),
        (file_type.is_dir(), "a directory"),
    ])
    .filter(|_| !file_type.is_file())
}

/// The same as [`irregular`], for cap-std's file type.
fn irregular_cap(file_type: cap_std::fs::FileType) -> Option<&'static str> {
    use cap_std::fs::FileTypeExt as _;
    describe([
        (file_type.is_fifo(), "a FIFO"),
        (file_type.is_socket(), "a socket"),
        (file_type.is_char_device(), "a character device"),
        (file_type.is_block_device(), "a block device"),
        (file_type.is_dir(), "a directory"),
    ])
    .filter(|_| !file_type.is_file())
}

/// The name of the first kind that applies, else "not a regular file".
fn describe(kinds: [(bool, &'static str); 5]) -> Option<&'static str> {
    Some(
        kinds
            .into_iter()
            .find_map(|(is, name)| is.then_some(name))
            .unwrap_or("not a regular file"),
    )
}

/// Whether `error` is cap-std's refusal of a path that leads outside the
/// folder it was resolved in.
fn is_escape(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::PermissionDenied
        && error
            .get_ref()
            .is_some_and(|e| e.to_string().contains("outside of the filesystem"))
}

/// A file of a plugin, opened beneath its tenant's folder.
struct Opened {
    file: std::fs::File,
    meta: std::fs::Metadata,
}

/// Opens the file `path` (in the tenant folder `dir`) for reading, without
/// blocking and without leaving the folder, and checks on the opened handle
/// that it is a regular file.
fn open_beneath(dir: &Dir, tenant: &str, path: &Path, kind: FileKind) -> Result<Opened, LoadError> {
    let name = path.file_name().unwrap_or_default();
    let refused = |source: std::io::Error| {
        let target = dir
            .symlink_metadata(name)
            .is_ok_and(|m| m.file_type().is_symlink())
            .then(|| link_target(dir, name));
        let leaves = target.as_deref().is_some_and(link_leaves_folder);
        match target {
            Some(target) if leaves || is_escape(&source) => LoadError::OutsideTenant {
                path: path.to_owned(),
                tenant: tenant.to_owned(),
                target,
                source,
            },
            _ => LoadError::Io {
                path: path.to_owned(),
                source,
            },
        }
    };
    let not_regular = |what| LoadError::NotRegularFile {
        path: path.to_owned(),
        kind,
        what,
    };
    // What the name leads to, before anything is opened: no FIFO, socket
    // or device is opened at all unless it is swapped in right now.
    let meta = dir.metadata(name).map_err(refused)?;
    if let Some(what) = irregular_cap(meta.file_type()) {
        return Err(not_regular(what));
    }
    // Non-blocking, so that a FIFO swapped in meanwhile is not waited on;
    // the handle's own type is what counts.
    let mut options = OpenOptions::new();
    options.read(true).nonblock(true);
    let file = dir.open_with(name, &options).map_err(refused)?.into_std();
    let meta = file.metadata().map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    if let Some(what) = irregular(meta.file_type()) {
        return Err(not_regular(what));
    }
    Ok(Opened { file, meta })
}

/// Reads an opened file whole, refusing one over `limit` bytes (checked on
/// the handle first, and again while reading, for a file that grows) and
/// one that changes while it is read.
fn read_opened(
    opened: Opened,
    path: &Path,
    kind: FileKind,
    limit: u64,
) -> Result<(Vec<u8>, Stamp), LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_owned(),
        source,
    };
    let too_large = |size| LoadError::TooLarge {
        path: path.to_owned(),
        kind,
        size,
        limit,
    };
    let Opened { file, meta } = opened;
    let size = meta.len();
    if size > limit {
        return Err(too_large(size));
    }
    let stamp = Stamp::from_std(&meta);
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    (&file)
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    let after = file.metadata().map_err(io)?;
    if Stamp::from_std(&after) != stamp || bytes.len() as u64 != size {
        return Err(LoadError::Changing {
            path: path.to_owned(),
        });
    }
    Ok((bytes, stamp))
}

/// What compiling a plugin needs from the host.
pub(crate) struct LoadContext {
    pub engine: Engine,
    pub linker: Linker<PluginState>,
    pub defaults: Limits,
    /// The operator's ceilings of the limits a manifest may ask for.
    pub max_limits: Limits,
    pub max_plugin_bytes: u64,
    pub max_manifest_bytes: u64,
    /// The outbound HTTP policy, with the tenants' ceilings.
    pub outbound: Arc<crate::outbound::OutboundConfig>,
    pub bounds: Arc<crate::sandbox::Bounds>,
    pub stats: Arc<crate::stats::Stats>,
    pub mode: crate::dispatch::InstanceMode,
    pub epoch_tick: std::time::Duration,
    pub fuel_metered: bool,
    pub concurrency: usize,
    pub cache: Option<crate::cache::CompileCache>,
    /// The largest linear memory of the pooling allocator's slots, when
    /// the engine pools instances.
    pub pool_memory: Option<u64>,
    /// Components larger than this that must be compiled (not in the
    /// compile cache) are compiled in the background by a first load
    /// ([`HostConfig::background_compile_bytes`](crate::HostConfig::background_compile_bytes)).
    pub background_compile_bytes: Option<u64>,
    /// The compiles under way, shared by every load and reload.
    pub compiling: InFlight,
    /// Every tenant's secrets, of which a plugin gets those granted to it.
    pub secrets: plugbus_core::secrets::TenantSecrets,
}

/// What a compile under way gives: the component and where it came from,
/// or why it did not compile.
type CompileResult = Result<(Component, crate::cache::CompileSource), String>;

/// The compiles under way, by the SHA-256 of the component: a load of the
/// same bytes as a compile under way (two tenants' same component, two
/// reloads at once) waits for that compile and shares its code instead of
/// compiling them again. An entry lives only while its compile runs, so
/// there are at most as many as loads under way (the reload's compile
/// permits, plus one first load).
#[derive(Default)]
pub(crate) struct InFlight {
    compiles: std::sync::Mutex<
        std::collections::HashMap<[u8; 32], Arc<std::sync::OnceLock<CompileResult>>>,
    >,
}

impl InFlight {
    /// The compiled component of `bytes` (whose SHA-256 is `digest`),
    /// from `compile` if no compile of the same bytes is under way, else
    /// from that one's (then [`CompileSource::Shared`](crate::cache::CompileSource::Shared)).
    /// Blocking: waits for the compile under way.
    fn once(&self, digest: &[u8; 32], compile: impl FnOnce() -> CompileResult) -> CompileResult {
        let lock = || {
            self.compiles
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let cell = lock().entry(*digest).or_default().clone();
        let mut ran = false;
        let result = cell
            .get_or_init(|| {
                ran = true;
                compile()
            })
            .clone();
        if ran {
            let mut compiles = lock();
            if compiles.get(digest).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                compiles.remove(digest);
            }
            return result;
        }
        result.map(|(component, _)| (component, crate::cache::CompileSource::Shared))
    }

    /// Whether a compile of the component whose SHA-256 is `digest` is
    /// under way.
    fn has(&self, digest: &[u8; 32]) -> bool {
        self.compiles
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(digest)
    }
}

/// Whether loading `source` now means compiling a component of more than
/// `background_compile_bytes`: not compiled in this load, not under way,
/// not in the compile cache.
pub(crate) fn compiles_long(ctx: &LoadContext, compiled: &Compiled, source: &Source) -> bool {
    let Some(limit) = ctx.background_compile_bytes else {
        return false;
    };
    source.bytes.len() as u64 > limit
        && !compiled.contains_key(&source.digest)
        && !ctx.compiling.has(&source.digest)
        && !ctx
            .cache
            .as_ref()
            .is_some_and(|cache| cache.contains(&source.digest))
}

/// Refuses a plugin whose memory limit the pooling allocator cannot hold.
pub(crate) fn check_pool(
    ctx: &LoadContext,
    candidate: &Candidate,
    limits: &Limits,
) -> Result<(), LoadError> {
    match ctx.pool_memory {
        Some(max_memory_bytes) if limits.memory_bytes > max_memory_bytes => {
            Err(LoadError::Manifest {
                path: candidate
                    .manifest
                    .clone()
                    .unwrap_or_else(|| candidate.wasm.clone()),
                reason: ManifestError::Limit(format!(
                    "limits.memory_mib is larger than this host's largest memory ({} MiB)",
                    max_memory_bytes / (1024 * 1024)
                )),
            })
        }
        _ => Ok(()),
    }
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
    modified: (i64, i64),
    device: u64,
    inode: u64,
    changed: (i64, i64),
}

impl Stamp {
    /// The stamp of an opened file's metadata.
    fn from_std(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        Self {
            len: meta.len(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            device: meta.dev(),
            inode: meta.ino(),
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// The stamp of what `path` (in the tenant folder `dir`) leads to,
    /// without opening it, and only if it stays inside the folder.
    fn beneath(dir: &Dir, path: &Path) -> Option<Self> {
        use cap_std::fs::MetadataExt as _;
        let meta = dir.metadata(path.file_name()?).ok()?;
        Some(Self {
            len: meta.len(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            device: meta.dev(),
            inode: meta.ino(),
            changed: (meta.ctime(), meta.ctime_nsec()),
        })
    }
}

/// The stamps of a plugin's files: its component and its manifest.
pub(crate) type Stamps = (Option<Stamp>, Option<Stamp>);

/// The stamps of a candidate's files; a file that cannot be reached inside
/// its tenant's folder has none.
pub(crate) fn stamps(candidate: &Candidate) -> Stamps {
    let Ok(dir) = open_tenant(&candidate.root, &candidate.tenant) else {
        return (None, None);
    };
    (
        Stamp::beneath(&dir, &candidate.wasm),
        candidate
            .manifest
            .as_deref()
            .and_then(|m| Stamp::beneath(&dir, m)),
    )
}

/// A plugin's files, read and checked, before compilation.
pub(crate) struct Source {
    manifest: Manifest,
    bytes: Vec<u8>,
    digest: [u8; 32],
    /// The SHA-256 of the component's SHA-256 and the manifest's bytes: two
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

    /// The component's size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }
}

/// Reads a plugin's manifest and component, each opened once beneath its
/// tenant's folder and read from that handle, refusing a file that changes
/// while it is read.
pub(crate) fn read(ctx: &LoadContext, candidate: &Candidate) -> Result<Source, LoadError> {
    let before = stamps(candidate);
    let dir = open_tenant(&candidate.root, &candidate.tenant)?;
    let tenant = candidate.tenant.as_str();
    let (manifest_bytes, manifest, manifest_stamp) = match &candidate.manifest {
        None => (Vec::new(), Manifest::with_defaults(ctx.defaults), None),
        Some(path) => {
            let opened = open_beneath(&dir, tenant, path, FileKind::Manifest)?;
            let (bytes, stamp) =
                read_opened(opened, path, FileKind::Manifest, ctx.max_manifest_bytes)?;
            let invalid = |reason| LoadError::Manifest {
                path: path.clone(),
                reason,
            };
            let text = std::str::from_utf8(&bytes).map_err(|e| {
                invalid(ManifestError::Syntax(format!(
                    "the manifest is not UTF-8 text: {e}"
                )))
            })?;
            let manifest = Manifest::parse(text, ctx.defaults).map_err(invalid)?;
            (bytes, manifest, Some(stamp))
        }
    };
    let opened = open_beneath(&dir, tenant, &candidate.wasm, FileKind::Component)?;
    let (bytes, wasm_stamp) = read_opened(
        opened,
        &candidate.wasm,
        FileKind::Component,
        ctx.max_plugin_bytes,
    )?;
    check_component(&candidate.wasm, &bytes)?;
    let after = stamps(candidate);
    let read = (Some(wasm_stamp), manifest_stamp);
    if before != after || read != after {
        let path = if before.0 == after.0 && read.0 == after.0 {
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
        fingerprint: fingerprint(&digest, &manifest_bytes),
        stamps: after,
    })
}

/// Refuses a plugin whose manifest asks for more than the operator's
/// ceilings ([`LoadContext::max_limits`], and its tenant's outbound
/// ceiling).
pub(crate) fn check_ceilings(
    ctx: &LoadContext,
    candidate: &Candidate,
    manifest: &Manifest,
) -> Result<(), LoadError> {
    if let Some(entry) = ctx
        .outbound
        .uncovered(&candidate.tenant, &manifest.http_allow)
    {
        return Err(LoadError::OutboundCeiling {
            path: candidate
                .manifest
                .clone()
                .unwrap_or_else(|| candidate.wasm.clone()),
            tenant: candidate.tenant.clone(),
            entry: entry.to_string(),
        });
    }
    match manifest.limits.above(&ctx.max_limits) {
        None => Ok(()),
        Some(above) => Err(LoadError::LimitCeiling {
            // Only a manifest can ask for more: the defaults are within
            // the ceilings (`check_settings`).
            path: candidate
                .manifest
                .clone()
                .unwrap_or_else(|| candidate.wasm.clone()),
            key: above.key,
            value: above.value,
            ceiling: above.ceiling,
            setting: above.setting,
        }),
    }
}

/// Compiles (or takes from `compiled` or the compile cache) a plugin's
/// component, checks it against the world `handler`, and instantiates it
/// once under its limits, so that a plugin that is returned is ready.
pub(crate) fn build(
    ctx: &LoadContext,
    compiled: &mut Compiled,
    candidate: &Candidate,
    source: Source,
) -> Result<(Plugin, crate::cache::CompileSource), LoadError> {
    use crate::cache::CompileSource;
    let path = &candidate.wasm;
    let compile_error = |reason: String| LoadError::Compile {
        path: path.clone(),
        reason,
    };
    let (component, origin) = match compiled.get(&source.digest) {
        Some(component) => (component.clone(), CompileSource::Compiled),
        None => {
            let (component, origin) = ctx
                .compiling
                .once(&source.digest, || {
                    match &ctx.cache {
                        Some(cache) => {
                            cache.load_or_compile(&ctx.engine, &source.digest, &source.bytes)
                        }
                        None => Component::from_binary(&ctx.engine, &source.bytes)
                            .map(|component| (component, CompileSource::Compiled)),
                    }
                    .map_err(|e| format!("{e:#}"))
                })
                .map_err(compile_error)?;
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
    let secrets = granted_secrets(ctx, candidate, &source.manifest);
    let identity = Arc::new(Identity {
        redactor: Arc::new(plugbus_core::secrets::Redactor::new(secrets.iter())),
        secrets,
        tenant: candidate.tenant.clone(),
        name: candidate.name.clone(),
        label: format!("{}/{}", candidate.tenant, candidate.name),
        source: format!("plugbus://{}/{}", candidate.tenant, candidate.name),
        version: version_of(&source.fingerprint),
        config: source.manifest.config.clone(),
    });
    // Only the batch layout of 0.2.0 and later is served.
    let batch_export = matches!(pre, Pre::V0_3(_) | Pre::V0_2(_))
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
        outbound: ctx.outbound.clone(),
    });
    plugin.warm_up().map_err(|failure| LoadError::Instantiate {
        path: path.clone(),
        reason: failure.message,
    })?;
    Ok((plugin, origin))
}

/// The secrets of its tenant that `manifest` grants the plugin; a granted
/// name its tenant does not have is logged (the plugin reads `none`).
fn granted_secrets(
    ctx: &LoadContext,
    candidate: &Candidate,
    manifest: &Manifest,
) -> plugbus_core::secrets::Secrets {
    let tenant = ctx.secrets.of(&candidate.tenant);
    let mut granted = plugbus_core::secrets::Secrets::new();
    for name in &manifest.secrets {
        match tenant.and_then(|secrets| secrets.get(name.as_str())) {
            Some(value) => granted.insert(name.clone(), value.clone()),
            None => tracing::warn!(
                plugin = %format!("{}/{}", candidate.tenant, candidate.name),
                secret = %name,
                "the plugin's manifest grants it secret {name}, which tenant {} does not have \
                 (no [tenants.{}.secrets] {name} in plugbus.toml): the plugin reads none",
                candidate.tenant,
                candidate.tenant,
            ),
        }
    }
    granted
}

/// Refuses anything that is not a component before it reaches the compiler.
fn check_component(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Err(LoadError::CoreModule {
            path: path.to_owned(),
        }),
        Some([0, b'a', b's', b'm', ..]) => Ok(()),
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

/// The SHA-256 of a component's SHA-256 and its manifest's bytes.
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
    fn scan_refuses_bad_names_and_tenant_links() -> Result<(), Box<dyn std::error::Error>> {
        let outside = tempfile::tempdir()?;
        std::fs::write(outside.path().join("secret.wasm"), b"\0asm")?;
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        std::fs::create_dir_all(root.join("acme/sub"))?;
        std::fs::create_dir_all(root.join("acme/folder.wasm"))?;
        std::fs::create_dir_all(root.join("Bad Tenant"))?;
        std::fs::create_dir_all(root.join(".hidden"))?;
        std::fs::create_dir_all(root.join("globex"))?;
        std::fs::write(root.join("acme/good.wasm"), b"")?;
        std::fs::write(root.join("acme/good.toml"), b"")?;
        std::fs::write(root.join("acme/Bad.wasm"), b"")?;
        std::fs::write(root.join("acme/orphan.toml"), b"")?;
        std::fs::write(root.join("acme/notes.txt"), b"")?;
        std::fs::write(root.join("stray.wasm"), b"")?;
        std::fs::write(root.join("globex/real.wasm"), b"")?;
        // Files that are links are candidates: they are checked when opened.
        std::os::unix::fs::symlink(
            outside.path().join("secret.wasm"),
            root.join("acme/leak.wasm"),
        )?;
        std::os::unix::fs::symlink("good.wasm", root.join("acme/alias.wasm"))?;
        // Tenant folders that are links are refused, wherever they point.
        std::os::unix::fs::symlink(outside.path(), root.join("evil"))?;
        std::os::unix::fs::symlink("globex", root.join("spy"))?;

        let (found, errors) = scan(root)?;
        let names: Vec<_> = found
            .iter()
            .map(|c| format!("{}/{}", c.tenant, c.name))
            .collect();
        assert_eq!(
            names,
            ["acme/alias", "acme/good", "acme/leak", "globex/real"]
        );
        assert!(found[1].manifest.is_some());
        assert!(found[0].manifest.is_none());
        assert!(
            found
                .iter()
                .all(|c| c.root == root.canonicalize().unwrap_or_default())
        );
        let mut kinds: Vec<_> = errors
            .iter()
            .map(|e| {
                let file = e
                    .path()
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned());
                (e.reason(), file.unwrap_or_default(), e.to_string())
            })
            .collect();
        kinds.sort_by(|a, b| a.1.cmp(&b.1));
        let files: Vec<_> = kinds.iter().map(|k| (k.1.as_str(), k.0)).collect();
        assert_eq!(
            files,
            [
                ("Bad Tenant", Some("invalid_name")),
                ("Bad.wasm", Some("invalid_name")),
                ("evil", Some("tenant_symlink")),
                ("orphan.toml", Some("orphan_manifest")),
                ("spy", Some("tenant_symlink")),
                ("stray.wasm", Some("misplaced")),
            ]
        );
        for (_, file, message) in &kinds {
            assert!(message.contains(file.as_str()), "{message} names {file}");
        }
        Ok(())
    }

    #[test]
    fn links_that_climb_out_leave_the_folder() {
        for inside in [
            "a.wasm",
            "./a.wasm",
            "v2/a.wasm",
            "v2/../a.wasm",
            "v2/./b/../a",
        ] {
            assert!(!link_leaves_folder(Path::new(inside)), "{inside}");
        }
        for outside in [
            "/etc/passwd",
            "../globex/secret.toml",
            "..",
            "v2/../../acme/a.wasm",
            "../acme/a.wasm",
            "./../a",
        ] {
            assert!(link_leaves_folder(Path::new(outside)), "{outside}");
        }
    }

    /// What each kind of file in a tenant's folder opens as.
    #[test]
    fn files_open_only_inside_their_tenant_folder() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().canonicalize()?;
        std::fs::create_dir_all(root.join("acme/v2"))?;
        std::fs::create_dir_all(root.join("globex"))?;
        std::fs::write(root.join("globex/secret.toml"), b"[config]\nkey = \"s\"\n")?;
        std::fs::write(root.join("acme/v2/p.toml"), b"subscribe = []\n")?;
        std::fs::write(root.join("acme/plain.toml"), b"subscribe = []\n")?;
        let link = |target: &str, name: &str| std::os::unix::fs::symlink(target, root.join(name));
        link("v2/p.toml", "acme/inside.toml")?;
        link("../globex/secret.toml", "acme/spy.toml")?;
        link(
            &root.join("acme/plain.toml").to_string_lossy(),
            "acme/absolute.toml",
        )?;
        link("../acme/plain.toml", "acme/roundabout.toml")?;
        // A chain: each link looks harmless, the last step leaves.
        link("hop.toml", "acme/chain.toml")?;
        link("../globex/secret.toml", "acme/hop.toml")?;
        link("../globex", "acme/sub")?;
        link("sub/secret.toml", "acme/via-dir.toml")?;
        let fifo = std::process::Command::new("mkfifo")
            .arg(root.join("acme/fifo.toml"))
            .status()?;
        assert!(fifo.success());
        let tenant = open_tenant(&root, "acme").map_err(|e| e.to_string())?;
        let open = |name: &str| {
            open_beneath(
                &tenant,
                "acme",
                &root.join("acme").join(name),
                FileKind::Manifest,
            )
        };
        for good in ["plain.toml", "inside.toml"] {
            let opened = open(good).map_err(|e| e.to_string())?;
            let (bytes, _) = read_opened(opened, Path::new(good), FileKind::Manifest, 1024)
                .map_err(|e| e.to_string())?;
            assert_eq!(bytes, b"subscribe = []\n");
        }
        for bad in [
            "spy.toml",
            "absolute.toml",
            "roundabout.toml",
            "chain.toml",
            "via-dir.toml",
        ] {
            match open(bad) {
                Err(e @ LoadError::OutsideTenant { .. }) => {
                    let message = e.to_string();
                    assert!(message.contains(bad), "{message}");
                    assert!(
                        message.contains("leaves the tenant folder acme/"),
                        "{message}"
                    );
                }
                other => panic!("{bad}: {:?}", other.map(|_| ())),
            }
        }
        match open("fifo.toml") {
            Err(e @ LoadError::NotRegularFile { what: "a FIFO", .. }) => {
                assert!(e.to_string().contains("fifo.toml"), "{e}");
            }
            other => panic!("fifo: {:?}", other.map(|_| ())),
        }
        assert!(matches!(
            open("v2"),
            Err(LoadError::NotRegularFile {
                what: "a directory",
                ..
            })
        ));
        assert!(matches!(open("missing.toml"), Err(LoadError::Io { .. })));
        // A tenant folder that is a link is refused when opened, too.
        std::os::unix::fs::symlink("globex", root.join("spy"))?;
        assert!(matches!(
            open_tenant(&root, "spy"),
            Err(LoadError::TenantSymlink { .. })
        ));
        Ok(())
    }

    #[test]
    fn reads_stop_one_byte_past_the_limit() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().canonicalize()?;
        std::fs::create_dir_all(root.join("acme"))?;
        std::fs::write(root.join("acme/exact.toml"), vec![b'#'; 100])?;
        std::fs::write(root.join("acme/over.toml"), vec![b'#'; 101])?;
        let tenant = open_tenant(&root, "acme").map_err(|e| e.to_string())?;
        let read = |name: &str| {
            let path = root.join("acme").join(name);
            open_beneath(&tenant, "acme", &path, FileKind::Manifest)
                .and_then(|opened| read_opened(opened, &path, FileKind::Manifest, 100))
        };
        assert_eq!(read("exact.toml").map_err(|e| e.to_string())?.0.len(), 100);
        match read("over.toml") {
            Err(
                e @ LoadError::TooLarge {
                    size: 101,
                    limit: 100,
                    ..
                },
            ) => {
                let message = e.to_string();
                assert!(message.contains("over.toml"), "{message}");
                assert!(message.contains("limits.max.manifest_bytes"), "{message}");
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        Ok(())
    }

    #[test]
    fn quotas_keep_what_serves_then_go_by_name() {
        let candidate = |tenant: &str, name: &str| Candidate {
            root: PathBuf::from("/p"),
            tenant: tenant.into(),
            name: name.into(),
            wasm: PathBuf::from(format!("/p/{tenant}/{name}.wasm")),
            manifest: None,
        };
        let names = |list: &[Candidate]| -> Vec<String> {
            list.iter()
                .map(|c| format!("{}/{}", c.tenant, c.name))
                .collect()
        };
        let all = vec![
            candidate("a", "x"),
            candidate("a", "c"),
            candidate("a", "b"),
            candidate("a", "a"),
            candidate("b", "z"),
            candidate("c", "one"),
        ];
        let quota = |tenant: &str| match tenant {
            "a" => 2,
            "c" => 0,
            _ => 100,
        };
        // A first load: the first by name.
        let (ok, over) = split_by_quota(all.clone(), |_| false, quota);
        assert_eq!(names(&ok), ["a/a", "a/b", "b/z"]);
        assert_eq!(names(&over), ["a/c", "a/x", "c/one"]);
        // What serves keeps its place, whatever its name.
        let (ok, over) = split_by_quota(all.clone(), |c| c.name == "x" || c.name == "c", quota);
        assert_eq!(names(&ok), ["a/c", "a/x", "b/z"]);
        assert_eq!(names(&over), ["a/a", "a/b", "c/one"]);
        // Exactly the quota fits.
        let (ok, over) = split_by_quota(all[2..4].to_vec(), |_| false, quota);
        assert_eq!((ok.len(), over.len()), (2, 0));
    }

    /// A second load of the same bytes while the first compiles waits for
    /// that compile and shares it; the next one after it compiles again
    /// (the compile cache, not this, serves loads after).
    #[test]
    fn a_compile_under_way_is_shared_not_repeated() {
        use crate::cache::CompileSource;
        let engine = Engine::default();
        // An empty component: the magic, version 0x0d, layer 1.
        let empty = Component::from_binary(&engine, b"\0asm\x0d\0\x01\0").expect("compiles");
        let in_flight = Arc::new(InFlight::default());
        let digest = [7; 32];
        let compiles = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let first = {
            let (in_flight, compiles, empty) = (in_flight.clone(), compiles.clone(), empty.clone());
            std::thread::spawn(move || {
                in_flight.once(&digest, || {
                    compiles.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    // Until the second load waits on this compile: the
                    // map's entry, this thread's and the second's.
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                    while in_flight
                        .compiles
                        .lock()
                        .map(|m| m.get(&digest).map_or(0, Arc::strong_count))
                        .unwrap_or(0)
                        < 3
                    {
                        assert!(std::time::Instant::now() < deadline, "the second load came");
                        std::thread::yield_now();
                    }
                    Ok((empty, CompileSource::CacheMiss))
                })
            })
        };
        while !in_flight.has(&digest) {
            std::thread::yield_now();
        }
        let second = in_flight.once(&digest, || {
            compiles.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err("compiled twice".into())
        });
        let first = first.join().expect("the first load");
        assert!(matches!(first, Ok((_, CompileSource::CacheMiss))));
        assert!(matches!(second, Ok((_, CompileSource::Shared))));
        assert_eq!(compiles.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(!in_flight.has(&digest), "no entry outlives its compile");
        let third = in_flight.once(&digest, || Err("compiled again".into()));
        assert_eq!(third.err().as_deref(), Some("compiled again"));
    }

    #[test]
    fn every_refusal_has_a_known_reason() {
        let path = PathBuf::from("p");
        let errors = [
            LoadError::Quota {
                path: path.clone(),
                tenant: "t".into(),
                quota: 1,
                setting: "quotas.max_plugins".into(),
            },
            LoadError::LimitCeiling {
                path: path.clone(),
                key: "limits.fuel",
                value: 2,
                ceiling: 1,
                setting: "limits.max.fuel",
            },
            LoadError::NotRegularFile {
                path: path.clone(),
                kind: FileKind::Component,
                what: "a FIFO",
            },
        ];
        for error in &errors {
            let reason = error.reason().expect("a refusal");
            assert!(REFUSAL_REASONS.contains(&reason), "{reason}");
        }
        assert_eq!(LoadError::Changing { path }.reason(), None);
    }
}
