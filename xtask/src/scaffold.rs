//! `cargo xtask new-plugin DIR [--name NAME] [--tenant TENANT]`: writes a
//! complete plugin crate, meant to live outside this repository, that
//! builds, tests and loads as it is.
//!
//! The crate takes the SDK from this checkout by absolute path (it is not
//! published), and gets a copy of the workspace's `Cargo.lock`, so that it
//! builds with the versions the SDK is tested with and from the crates
//! already downloaded (cargo drops the entries it does not need).

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};

/// The tenant of the demo that publishes with a public token.
const DEFAULT_TENANT: &str = "acme-pos";

/// The longest tenant or plugin name the host accepts.
const MAX_NAME_LEN: usize = 64;

/// What the command was asked for.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    dir: PathBuf,
    name: Option<String>,
    tenant: String,
}

impl Request {
    fn parse(args: &[String]) -> anyhow::Result<Self> {
        let mut dir = None;
        let mut name = None;
        let mut tenant = None;
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
                _ => (arg.as_str(), None),
            };
            let slot = match flag {
                "--name" => &mut name,
                "--tenant" => &mut tenant,
                _ if flag.starts_with('-') => bail!("new-plugin: unknown flag {flag:?}"),
                _ if dir.is_none() => {
                    dir = Some(PathBuf::from(arg));
                    continue;
                }
                _ => bail!("new-plugin: one DIR only; {arg:?} is a second one"),
            };
            let value = match inline {
                Some(value) => value,
                None => args
                    .next()
                    .with_context(|| format!("new-plugin: {flag} needs a value"))?
                    .clone(),
            };
            *slot = Some(value);
        }
        Ok(Self {
            dir: dir.context("new-plugin: which directory? (cargo xtask new-plugin DIR)")?,
            name,
            tenant: tenant.unwrap_or_else(|| DEFAULT_TENANT.to_owned()),
        })
    }
}

/// Runs `new-plugin` with its arguments.
pub fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    let request = Request::parse(args)?;
    let workspace = super::workspace();
    let written = scaffold(&request, &workspace)?;
    let shown = written.dir.display();
    println!(
        "wrote the plugin {name} (tenant {tenant}) in {shown}\n\n  \
         cd {shown}\n  \
         cargo test\n  \
         cargo build --target wasm32-wasip2 --release\n\n\
         The component is target/wasm32-wasip2/release/{crate_name}.wasm; \
         {shown}/README.md says where it goes.",
        name = written.name,
        tenant = request.tenant,
        crate_name = written.name.replace('-', "_"),
    );
    let checkout = workspace
        .canonicalize()
        .unwrap_or_else(|_| workspace.clone());
    if written.dir.starts_with(&checkout) {
        eprintln!(
            "note: {shown} is inside the plugbus checkout; it is a crate of its own \
             (its Cargo.toml has an empty [workspace] table), not a member of plugbus's workspace"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What [`scaffold`] wrote.
#[derive(Debug)]
struct Written {
    /// The crate's directory, absolute.
    dir: PathBuf,
    /// The crate's (and the plugin's) name.
    name: String,
}

/// Writes the crate that `request` asks for, with the SDK of the checkout
/// at `workspace`.
fn scaffold(request: &Request, workspace: &Path) -> anyhow::Result<Written> {
    let name = match &request.name {
        Some(name) => name.clone(),
        None => default_name(&request.dir)?,
    };
    if let Err(e) = check_name("plugin", &name) {
        match request.name {
            Some(_) => bail!("new-plugin: --name: {e}"),
            None => bail!(
                "new-plugin: {e}; the name comes from DIR: pass --name NAME to choose another"
            ),
        }
    }
    if let Err(e) = check_name("tenant", &request.tenant) {
        bail!("new-plugin: --tenant: {e}");
    }

    let dir = std::path::absolute(&request.dir)
        .with_context(|| format!("new-plugin: cannot resolve {}", request.dir.display()))?;
    ensure_empty_dir(&dir)?;
    // Without `..` or symlinks, now that it exists: `../my-plugin` seen
    // from the checkout is beside it, not in it.
    let dir = dir
        .canonicalize()
        .with_context(|| format!("new-plugin: cannot resolve {}", dir.display()))?;

    let sdk = workspace.join("guest-sdk");
    let sdk = sdk
        .to_str()
        .with_context(|| format!("new-plugin: the SDK's path {} is not UTF-8", sdk.display()))?;
    // A JSON string is a TOML basic string: the escapes of JSON are a
    // subset of TOML's.
    let sdk_path = serde_json::to_string(sdk)?;
    let crate_name = name.replace('-', "_");
    let fill = |template: &str| {
        template
            .replace("{{name}}", &name)
            .replace("{{crate}}", &crate_name)
            .replace("{{tenant}}", &request.tenant)
            .replace("{{sdk_path}}", &sdk_path)
            .replace("{{repository}}", env!("CARGO_PKG_REPOSITORY"))
            .replace("{{workspace}}", &workspace.display().to_string())
    };
    let lock = std::fs::read(workspace.join("Cargo.lock"))
        .with_context(|| format!("new-plugin: cannot read {}/Cargo.lock", workspace.display()))?;

    let files: [(PathBuf, Vec<u8>); 6] = [
        (
            "Cargo.toml".into(),
            fill(include_str!("scaffold/Cargo.toml.in")).into(),
        ),
        ("Cargo.lock".into(), lock),
        (
            "src/lib.rs".into(),
            fill(include_str!("scaffold/lib.rs.in")).into(),
        ),
        (
            format!("{name}.toml").into(),
            fill(include_str!("scaffold/manifest.toml.in")).into(),
        ),
        (
            "README.md".into(),
            fill(include_str!("scaffold/README.md.in")).into(),
        ),
        (
            ".gitignore".into(),
            include_str!("scaffold/gitignore.in").into(),
        ),
    ];
    for (path, contents) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("new-plugin: cannot create {}", parent.display()))?;
        }
        std::fs::File::create_new(&path)
            .and_then(|mut file| file.write_all(&contents))
            .with_context(|| format!("new-plugin: cannot write {}", path.display()))?;
    }
    Ok(Written { dir, name })
}

/// The last component of `dir`, as the plugin's name.
fn default_name(dir: &Path) -> anyhow::Result<String> {
    let last: Option<OsString> = std::path::absolute(dir)
        .ok()
        .and_then(|d| d.file_name().map(ToOwned::to_owned));
    let Some(last) = last else {
        bail!(
            "new-plugin: {} has no last component to name the plugin after; pass --name NAME",
            dir.display()
        );
    };
    last.into_string().map_err(|last| {
        anyhow::anyhow!("new-plugin: the directory name {last:?} is not UTF-8; pass --name NAME")
    })
}

/// Checks a name against the host's rule for tenant and plugin names (1 to
/// 64 lowercase ASCII letters, digits, `-` and `_`) and, for a plugin,
/// cargo's for a package: a letter first, and not a Rust keyword or the
/// name of a built-in crate.
fn check_name(what: &str, name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        bail!(
            "a {what} name is 1 to {MAX_NAME_LEN} characters; {name:?} is {}",
            name.len()
        );
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        bail!(
            "the {what} name {name:?} contains {c:?}; only lowercase letters, digits, '-' and '_' are allowed"
        );
    }
    if what == "plugin" {
        if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            bail!("the plugin name {name:?} must start with a letter (it is a crate's name)");
        }
        if RESERVED.contains(&name.replace('-', "_").as_str()) {
            bail!(
                "the plugin name {name:?} is reserved in Rust; cargo refuses it as a crate's name"
            );
        }
    }
    Ok(())
}

/// Names cargo refuses for a package: Rust's keywords and the built-in
/// crates (compared after `-` becomes `_`).
const RESERVED: &[&str] = &[
    "abstract",
    "alloc",
    "as",
    "async",
    "await",
    "become",
    "box",
    "break",
    "const",
    "continue",
    "core",
    "crate",
    "do",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "final",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "macro",
    "match",
    "mod",
    "move",
    "mut",
    "override",
    "priv",
    "proc_macro",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "std",
    "struct",
    "super",
    "test",
    "trait",
    "true",
    "try",
    "type",
    "typeof",
    "unsafe",
    "unsized",
    "use",
    "virtual",
    "where",
    "while",
    "yield",
];

/// Creates `dir` when it does not exist; refuses a file, and a directory
/// that is not empty.
fn ensure_empty_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "new-plugin: {} is not empty; choose a new or empty directory",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(dir)
            .with_context(|| format!("new-plugin: cannot create {}", dir.display())),
        Err(e) if dir.is_file() => Err(e)
            .with_context(|| format!("new-plugin: {} is a file, not a directory", dir.display())),
        Err(e) => Err(e).with_context(|| format!("new-plugin: cannot read {}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn arguments_parse_with_and_without_equals() {
        let request = Request::parse(&args(&["../p", "--name", "my-plugin", "--tenant=globex"]))
            .expect("valid");
        assert_eq!(
            request,
            Request {
                dir: "../p".into(),
                name: Some("my-plugin".into()),
                tenant: "globex".into()
            }
        );
        let request = Request::parse(&args(&["p"])).expect("valid");
        assert_eq!(request.tenant, DEFAULT_TENANT);
        assert_eq!(request.name, None);
    }

    #[test]
    fn bad_arguments_are_refused_by_name() {
        let err = |list: &[&str]| format!("{:#}", Request::parse(&args(list)).unwrap_err());
        assert!(err(&[]).contains("which directory"));
        assert!(err(&["a", "b"]).contains("\"b\" is a second one"));
        assert!(err(&["a", "--name"]).contains("--name needs a value"));
        assert!(err(&["a", "--force"]).contains("unknown flag \"--force\""));
    }

    #[test]
    fn names_follow_the_host_and_cargo() {
        for good in ["my-plugin", "order_counter", "p1", "a"] {
            check_name("plugin", good).expect(good);
        }
        for (bad, why) in [
            ("My-Plugin", "contains 'M'"),
            ("my plugin", "contains ' '"),
            ("1st", "must start with a letter"),
            ("-x", "must start with a letter"),
            ("fn", "reserved"),
            ("proc-macro", "reserved"),
            ("", "1 to 64"),
        ] {
            let message = check_name("plugin", bad).unwrap_err().to_string();
            assert!(message.contains(why), "{bad:?}: {message}");
        }
        check_name("tenant", "1-store").expect("a tenant may start with a digit");
        assert!(check_name("tenant", "Acme").is_err());
        assert!(check_name("plugin", &"x".repeat(65)).is_err());
    }

    #[test]
    fn a_directory_that_is_not_empty_or_a_file_is_refused() {
        let temp = tempfile::tempdir().expect("a temporary directory");
        let root = temp.path();
        std::fs::create_dir_all(root.join("full")).expect("create");
        std::fs::write(root.join("full/x"), "x").expect("write");
        std::fs::write(root.join("file"), "x").expect("write");
        let workspace = super::super::workspace();
        let attempt = |dir: &str, name: Option<&str>| {
            scaffold(
                &Request {
                    dir: root.join(dir),
                    name: name.map(str::to_owned),
                    tenant: DEFAULT_TENANT.into(),
                },
                &workspace,
            )
            .map(|w| w.name)
            .map_err(|e| format!("{e:#}"))
        };
        let full = attempt("full", None).unwrap_err();
        assert!(full.contains("is not empty"), "{full}");
        let file = attempt("file", None).unwrap_err();
        assert!(file.contains("is a file"), "{file}");
        let bad = attempt("Bad_Dir", None).unwrap_err();
        assert!(bad.contains("pass --name NAME"), "{bad}");
        assert!(
            !root.join("Bad_Dir").exists(),
            "nothing is written for a bad name"
        );
        assert_eq!(attempt("Bad_Dir", Some("good")).as_deref(), Ok("good"));
        assert!(root.join("Bad_Dir/good.toml").is_file());
    }

    /// `../my-plugin` from inside a folder is written beside it, and named
    /// without the `..`: the note "inside the plugbus checkout" compares
    /// the two, so a `..` must not make a sibling look like a child.
    #[test]
    fn the_written_directory_is_named_without_dot_dot() {
        let temp = tempfile::tempdir().expect("a temporary directory");
        let root = temp.path().canonicalize().expect("canonical");
        std::fs::create_dir_all(root.join("checkout")).expect("create");
        let written = scaffold(
            &Request {
                dir: root.join("checkout/../my-plugin"),
                name: None,
                tenant: DEFAULT_TENANT.into(),
            },
            &super::super::workspace(),
        )
        .expect("scaffold");
        assert_eq!(written.dir, root.join("my-plugin"));
        assert!(!written.dir.starts_with(root.join("checkout")));
    }
}
