//! Embeds the project templates of `plugbus new` in the binary, so that an
//! installed `plugbus` writes projects without a checkout of plugbus.
//!
//! Each language has a template directory, whose files are copied into the
//! new project with a trailing `.in` dropped from their names and the
//! placeholders `{{name}}`, `{{crate}}` and `{{tenant}}` replaced, and files
//! copied as they are: its SDK and the WIT contract, `wit/plugbus.wit` and
//! the packages it imports in `wit/deps` (and the lock file: for
//! Rust the workspace's `Cargo.lock`, for JavaScript the SDK's
//! `package-lock.json`). Every directory is walked, so a file added to
//! a template is embedded without a list. A template or SDK directory
//! that is missing fails the build, naming it.
//!
//! Writes `$OUT_DIR/templates.rs`, included by the binary's `new` module.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// What a language's project is made of: its template directory and the
/// files or directories copied as they are (source, destination), all
/// relative to the workspace.
struct Language {
    /// The constant's name in the generated code.
    constant: &'static str,
    template: &'static str,
    verbatim: &'static [(&'static str, &'static str)],
}

const LANGUAGES: [Language; 3] = [
    Language {
        constant: "RUST",
        template: "guest-sdk/template",
        verbatim: &[
            ("guest-sdk/src", "plugbus-sdk/src"),
            ("wit/plugbus.wit", "wit/plugbus.wit"),
            // The wasi packages the world imports (wasi:http and its own).
            ("wit/deps", "wit/deps"),
            ("Cargo.lock", "Cargo.lock"),
        ],
    },
    Language {
        constant: "PYTHON",
        template: "guest-sdk/python/template",
        verbatim: &[
            ("guest-sdk/python/plugbus", "plugbus"),
            ("wit/plugbus.wit", "wit/plugbus.wit"),
            // The wasi packages the world imports (wasi:http and its own).
            ("wit/deps", "wit/deps"),
        ],
    },
    Language {
        constant: "JS",
        template: "guest-sdk/js/template",
        verbatim: &[
            ("guest-sdk/js/plugbus", "plugbus"),
            ("wit/plugbus.wit", "wit/plugbus.wit"),
            // The wasi packages the world imports (wasi:http and its own).
            ("wit/deps", "wit/deps"),
            // The SDK's lock pins the build tools; npm ci does not mind
            // that its root package's name is the SDK's.
            ("guest-sdk/js/package-lock.json", "package-lock.json"),
        ],
    },
];

/// Names never embedded: caches and installed tools that tests and builds
/// leave beside the sources.
const SKIPPED: [&str; 6] = [
    "__pycache__",
    ".pytest_cache",
    "node_modules",
    "target",
    ".DS_Store",
    ".mypy_cache",
];

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let workspace = manifest_dir
        .parent()
        .and_then(Path::parent)
        .expect("host/plugbus lies two levels below the workspace root")
        .to_owned();
    let mut out = String::new();
    for language in &LANGUAGES {
        let template = workspace.join(language.template);
        let missing: Vec<&str> = std::iter::once(language.template)
            .chain(language.verbatim.iter().map(|(source, _)| *source))
            .filter(|path| !workspace.join(path).exists())
            .collect();
        watch(&workspace, language.template);
        for (source, _) in language.verbatim {
            watch(&workspace, source);
        }
        assert!(
            missing.is_empty(),
            "plugbus new's {} template needs {missing:?}, which this checkout does not have",
            language.constant
        );
        let mut files = Vec::new();
        walk(&template, &template, "", true, &mut files);
        for (source, destination) in language.verbatim {
            let path = workspace.join(source);
            walk(&path, &path, destination, false, &mut files);
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        writeln!(
            out,
            "/// Embedded from {} and the files copied with it.\n\
             pub(crate) const {}: Embedded = &[",
            language.template, language.constant
        )
        .expect("writing to a String");
        for (destination, source, template) in files {
            writeln!(
                out,
                "    EmbeddedFile {{ path: {destination:?}, template: {template}, contents: include_bytes!({:?}) }},",
                source.to_str().expect("a UTF-8 path")
            )
            .expect("writing to a String");
        }
        out.push_str("];\n");
    }
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    std::fs::write(out_dir.join("templates.rs"), out).expect("write templates.rs");
}

/// Tells cargo to run this script again when `path` changes, or, while it
/// does not exist, when its nearest existing parent does (a path that does
/// not exist would make cargo run the script on every build).
fn watch(workspace: &Path, path: &str) {
    let mut path = workspace.join(path);
    while !path.exists() {
        match path.parent() {
            Some(parent) if parent.starts_with(workspace) => path = parent.to_owned(),
            _ => return,
        }
    }
    println!("cargo::rerun-if-changed={}", path.display());
}

/// Adds the files under `path` (or `path` itself, a file) to `files` as
/// (destination, source, is a template), the destination `prefix` joined
/// with the path relative to `root`.
fn walk(
    root: &Path,
    path: &Path,
    prefix: &str,
    template: bool,
    files: &mut Vec<(String, PathBuf, bool)>,
) {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("template files have UTF-8 names");
    if SKIPPED.contains(&name) || name.ends_with(".pyc") {
        return;
    }
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
            .map(|entry| entry.expect("a directory entry").path())
            .collect();
        entries.sort();
        for entry in entries {
            walk(root, &entry, prefix, template, files);
        }
        return;
    }
    let relative = path
        .strip_prefix(root)
        .expect("walked below its root")
        .to_str()
        .expect("template files have UTF-8 names");
    let destination = match (prefix, relative) {
        (prefix, "") => prefix.to_owned(),
        ("", relative) => relative.to_owned(),
        (prefix, relative) => format!("{prefix}/{relative}"),
    };
    files.push((destination, path.to_owned(), template));
}
