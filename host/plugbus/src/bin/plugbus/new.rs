//! `plugbus new NAME --lang rust|python|js [--tenant T] [--dir DIR]`:
//! writes a ready plugin project (a handler with state, its manifest, a
//! native test, a README with the build, test and install commands, a
//! `.gitignore`) from a template embedded in the binary (see `build.rs`),
//! so that an installed `plugbus` needs no checkout of plugbus.
//!
//! Each project gets its language's SDK and the WIT contract
//! (`wit/plugbus.wit`, and the wasi packages it imports in `wit/deps/`)
//! copied in, so it builds on its own: a Rust crate
//! takes its SDK from `plugbus-sdk/` and pins its dependencies with a copy
//! of plugbus's `Cargo.lock`; a Python or JavaScript project imports the
//! SDK package `plugbus/`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};

/// The tenant the project's README and manifest are written for when
/// `--tenant` is not given: the demo's tenant that publishes with a public
/// token.
const DEFAULT_TENANT: &str = "acme-pos";

/// One file of a project template, embedded by `build.rs`.
pub(crate) struct EmbeddedFile {
    /// Where it goes in the project, relative; a template's own files with
    /// their placeholders and `.in` still in.
    pub path: &'static str,
    /// A file of the template directory (placeholders replaced, `.in`
    /// dropped), or one copied as it is (the SDK, the WIT, a lock file).
    pub template: bool,
    /// Its bytes.
    pub contents: &'static [u8],
}

/// A language's project template, as this binary was built: its files.
pub(crate) type Embedded = &'static [EmbeddedFile];

include!(concat!(env!("OUT_DIR"), "/templates.rs"));

/// The languages `plugbus new` writes plugins in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    /// A Rust crate with the Rust SDK: `cargo test`, then `cargo build
    /// --target wasm32-wasip2 --release`.
    Rust,
    /// A Python app (`app.py`) for componentize-py, with the Python SDK
    /// and a pytest test.
    Python,
    /// A JavaScript handler (`handler.js`) for componentize-js, with the
    /// JavaScript SDK and a `node --test` test.
    Js,
}

impl Lang {
    /// The flag's value, as the user types it.
    fn as_str(self) -> &'static str {
        match self {
            Self::Rust => "rust",
            Self::Python => "python",
            Self::Js => "js",
        }
    }

    fn embedded(self) -> Embedded {
        match self {
            Self::Rust => RUST,
            Self::Python => PYTHON,
            Self::Js => JS,
        }
    }
}

/// Writes a new plugin project from a template built into this binary.
///
/// The project is self-contained: the language's SDK and the WIT contract
/// are copied in. Its README says how to test it natively, build the
/// component, and install it in a host.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The plugin's name: 1 to 64 lowercase letters, digits, '-' and '_',
    /// starting with a letter (and, for Rust, not a Rust keyword). It is
    /// the component's and the manifest's file name in the plugins
    /// directory, <tenant>/<NAME>.wasm and <tenant>/<NAME>.toml.
    pub name: String,

    /// The plugin's language.
    #[arg(long, value_enum)]
    pub lang: Lang,

    /// The tenant the README's install commands are written for.
    #[arg(long, default_value = DEFAULT_TENANT)]
    pub tenant: String,

    /// Where to write the project: a directory that does not exist or is
    /// empty. [default: ./NAME]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// A plugin name that the host accepts and that the language's tools
/// accept as a project's name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PluginName(String);

impl PluginName {
    /// Checks `name` against the host's rule for plugin names (1 to 64
    /// lowercase ASCII letters, digits, `-` and `_`), a letter first (a
    /// crate's and a package's name), and for Rust, cargo's refusal of
    /// keywords and built-in crates.
    fn parse(name: &str, lang: Lang) -> anyhow::Result<Self> {
        plugbus::manifest::validate_name(name)
            .with_context(|| format!("{name:?} is not a valid plugin name"))?;
        if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            bail!("the plugin name {name:?} must start with a letter");
        }
        if lang == Lang::Rust && RESERVED.contains(&crate_name(name).as_str()) {
            bail!(
                "the plugin name {name:?} is reserved in Rust; cargo refuses it as a crate's name"
            );
        }
        Ok(Self(name.to_owned()))
    }
}

/// A valid tenant name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TenantName(String);

impl TenantName {
    fn parse(name: &str) -> anyhow::Result<Self> {
        plugbus::manifest::validate_name(name)
            .with_context(|| format!("--tenant: {name:?} is not a valid tenant name"))?;
        Ok(Self(name.to_owned()))
    }
}

/// A plugin's name as a Rust crate spells it in code and file names.
fn crate_name(name: &str) -> String {
    name.replace('-', "_")
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

/// What [`write_project`] wrote.
#[derive(Debug)]
struct Written {
    /// The project's directory, absolute and canonical.
    dir: PathBuf,
    /// The files written, relative to `dir`.
    files: Vec<PathBuf>,
}

/// Runs `plugbus new`.
pub fn run(args: NewArgs) -> anyhow::Result<ExitCode> {
    let name = PluginName::parse(&args.name, args.lang)?;
    let tenant = TenantName::parse(&args.tenant)?;
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(&name.0));
    let written = write_project(args.lang.embedded(), &name, &tenant, &dir)?;
    let shown = written.dir.display();
    let next = match args.lang {
        Lang::Rust => format!(
            "  cd {shown}\n  cargo test\n  cargo build --target wasm32-wasip2 --release\n\n\
             The component is target/wasm32-wasip2/release/{}.wasm; README.md says where it goes.",
            crate_name(&name.0)
        ),
        Lang::Python | Lang::Js => format!(
            "  cd {shown}\n\nREADME.md has the commands that test the handler natively, build \
             the component {name}.wasm and install it in a host.",
            name = name.0
        ),
    };
    println!(
        "wrote the {lang} plugin {name} (tenant {tenant}, {count} files) in {shown}\n\n{next}",
        lang = args.lang.as_str(),
        name = name.0,
        tenant = tenant.0,
        count = written.files.len(),
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes the project of `files` for `name` and `tenant` in `dir`
/// (created when missing; refused when not empty).
fn write_project(
    files: Embedded,
    name: &PluginName,
    tenant: &TenantName,
    dir: &Path,
) -> anyhow::Result<Written> {
    let dir = std::path::absolute(dir)
        .with_context(|| format!("cannot resolve the directory {}", dir.display()))?;
    ensure_empty_dir(&dir)?;
    // Without `..` or symbolic links, now that it exists.
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve the directory {}", dir.display()))?;
    let crate_name = crate_name(&name.0);
    let fill = |text: &str| {
        text.replace("{{name}}", &name.0)
            .replace("{{crate}}", &crate_name)
            .replace("{{tenant}}", &tenant.0)
    };
    let mut written = Vec::with_capacity(files.len());
    for file in files {
        let (path, contents): (String, std::borrow::Cow<'_, [u8]>) = if file.template {
            let path = fill(file.path.strip_suffix(".in").unwrap_or(file.path));
            // A template's text gets its placeholders; anything else (an
            // image, say) is copied as it is.
            let contents = match std::str::from_utf8(file.contents) {
                Ok(text) => fill(text).into_bytes().into(),
                Err(_) => file.contents.into(),
            };
            (path, contents)
        } else {
            (file.path.to_owned(), file.contents.into())
        };
        let relative = PathBuf::from(&path);
        let target = dir.join(&relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::File::create_new(&target)
            .and_then(|mut out| out.write_all(&contents))
            .with_context(|| format!("cannot write {}", target.display()))?;
        written.push(relative);
    }
    Ok(Written {
        dir,
        files: written,
    })
}

/// Creates `dir` when it does not exist; refuses a file, and a directory
/// that is not empty.
fn ensure_empty_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} is not empty; choose a new or empty directory with --dir",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the directory {}", dir.display())),
        Err(e) if dir.is_file() => Err(e).with_context(|| {
            format!(
                "{} is a file, not a directory; choose a new or empty directory with --dir",
                dir.display()
            )
        }),
        Err(e) => Err(e).with_context(|| format!("cannot read the directory {}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> PluginName {
        PluginName(s.to_owned())
    }

    fn tenant(s: &str) -> TenantName {
        TenantName(s.to_owned())
    }

    #[test]
    fn names_follow_the_host_and_the_language() {
        for good in ["my-plugin", "order_counter", "p1", "a"] {
            for lang in [Lang::Rust, Lang::Python, Lang::Js] {
                PluginName::parse(good, lang).expect(good);
            }
        }
        for (bad, why) in [
            ("My-Plugin", "contains 'M'"),
            ("my plugin", "contains ' '"),
            ("1st", "must start with a letter"),
            ("-x", "must start with a letter"),
            ("", "empty"),
        ] {
            let message = format!("{:#}", PluginName::parse(bad, Lang::Python).unwrap_err());
            assert!(message.contains(why), "{bad:?}: {message}");
        }
        let long = format!(
            "{:#}",
            PluginName::parse(&"x".repeat(65), Lang::Js).unwrap_err()
        );
        assert!(long.contains("65 bytes long"), "{long}");
        for reserved in ["fn", "proc-macro", "self"] {
            let message = format!("{:#}", PluginName::parse(reserved, Lang::Rust).unwrap_err());
            assert!(message.contains("reserved in Rust"), "{message}");
            PluginName::parse(reserved, Lang::Python).expect("only Rust reserves keywords");
        }
        TenantName::parse("1-store").expect("a tenant may start with a digit");
        let message = format!("{:#}", TenantName::parse("Acme").unwrap_err());
        assert!(
            message.contains("--tenant") && message.contains("'A'"),
            "{message}"
        );
    }

    #[test]
    fn the_flags_parse() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            new: NewArgs,
        }
        let cli =
            Cli::try_parse_from(["new", "p", "--lang", "python", "--dir", "/x"]).expect("valid");
        assert_eq!(cli.new.lang, Lang::Python);
        assert_eq!(cli.new.tenant, DEFAULT_TENANT);
        assert_eq!(cli.new.dir.as_deref(), Some(Path::new("/x")));
        let missing = Cli::try_parse_from(["new", "p"])
            .err()
            .map(|e| e.to_string());
        assert!(missing.is_some_and(|m| m.contains("--lang")));
        let unknown = Cli::try_parse_from(["new", "p", "--lang", "go"])
            .err()
            .map(|e| e.to_string());
        assert!(unknown.is_some_and(|m| m.contains("rust, python, js")));
    }

    /// Files are copied with `.in` dropped and the placeholders replaced,
    /// in their names too; files copied as they are keep their text.
    #[test]
    fn templates_are_filled_in() {
        static FILES: [EmbeddedFile; 4] = [
            EmbeddedFile {
                path: "{{name}}.toml.in",
                template: true,
                contents: b"# {{name}} of {{tenant}} ({{crate}})\n",
            },
            EmbeddedFile {
                path: "src/app.py",
                template: true,
                contents: b"NAME = '{{name}}'\n",
            },
            EmbeddedFile {
                path: "plugbus/__init__.py.in",
                template: false,
                contents: b"# {{name}} stays\n",
            },
            EmbeddedFile {
                path: "logo.png",
                template: true,
                contents: &[0xff, 0xfe, b'{', b'{'],
            },
        ];
        let temp = tempfile::tempdir().expect("a temporary directory");
        let dir = temp.path().join("p");
        let written =
            write_project(&FILES, &name("my-plugin"), &tenant("globex"), &dir).expect("written");
        let read = |path: &str| std::fs::read(dir.join(path)).expect(path);
        assert_eq!(
            read("my-plugin.toml"),
            b"# my-plugin of globex (my_plugin)\n"
        );
        assert_eq!(read("src/app.py"), b"NAME = 'my-plugin'\n");
        assert_eq!(read("plugbus/__init__.py.in"), b"# {{name}} stays\n");
        assert_eq!(read("logo.png"), [0xff, 0xfe, b'{', b'{']);
        assert_eq!(written.files.len(), 4);
    }

    #[test]
    fn a_directory_that_is_not_empty_or_a_file_is_refused() {
        let temp = tempfile::tempdir().expect("a temporary directory");
        let root = temp.path();
        std::fs::create_dir_all(root.join("full")).expect("create");
        std::fs::write(root.join("full/x"), "x").expect("write");
        std::fs::write(root.join("file"), "x").expect("write");
        std::fs::create_dir_all(root.join("empty")).expect("create");
        let attempt = |dir: &str| {
            write_project(RUST, &name("p"), &tenant("acme-pos"), &root.join(dir))
                .map_err(|e| format!("{e:#}"))
        };
        let full = attempt("full").unwrap_err();
        assert!(full.contains("full is not empty"), "{full}");
        let file = attempt("file").unwrap_err();
        assert!(file.contains("file is a file"), "{file}");
        attempt("empty").expect("an empty directory is fine");
        assert!(root.join("empty/p.toml").is_file());
    }

    /// The Rust project: its template's files, the SDK's copy and its
    /// manifest (whose dependencies are the workspace's versions, which
    /// the lock file pins), the WIT, the lock file.
    #[test]
    fn the_rust_project_is_complete() {
        let temp = tempfile::tempdir().expect("a temporary directory");
        let written = write_project(
            RUST,
            &name("my-plugin"),
            &tenant("acme-pos"),
            &temp.path().join("my-plugin"),
        )
        .expect("written");
        for file in [
            "Cargo.toml",
            "Cargo.lock",
            "src/lib.rs",
            "my-plugin.toml",
            "README.md",
            ".gitignore",
            "plugbus-sdk/Cargo.toml",
            "plugbus-sdk/src/lib.rs",
            "plugbus-sdk/src/testing.rs",
            "wit/plugbus.wit",
        ] {
            assert!(
                written.files.contains(&PathBuf::from(file)),
                "{file} is missing"
            );
        }
        for file in &written.files {
            let text = std::fs::read_to_string(written.dir.join(file)).unwrap_or_default();
            if !file.starts_with("plugbus-sdk/src") {
                assert!(
                    !text.contains("{{"),
                    "{} keeps a placeholder",
                    file.display()
                );
            }
        }
        let workspace: toml::Table = toml::from_str(include_str!("../../../../../Cargo.toml"))
            .expect("the workspace's Cargo.toml");
        let sdk: toml::Table = toml::from_str(
            &std::fs::read_to_string(written.dir.join("plugbus-sdk/Cargo.toml")).expect("read"),
        )
        .expect("the SDK's Cargo.toml");
        for dependency in ["wit-bindgen", "serde", "serde_json"] {
            assert_eq!(
                workspace["workspace"]["dependencies"][dependency]["version"],
                sdk["dependencies"][dependency]["version"],
                "{dependency}: the SDK's copy must use the workspace's version"
            );
        }
    }
}
