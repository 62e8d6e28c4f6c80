//! `plugbus hash-token`: the hex SHA-256 that `plugbus.toml` stores for a
//! token (`token_sha256`).

use std::process::ExitCode;

use anyhow::Context as _;

/// Prints the hash of the token on stdin.
pub fn hash_token() -> anyhow::Result<ExitCode> {
    let mut token = String::new();
    std::io::stdin()
        .read_line(&mut token)
        .context("cannot read the token from stdin")?;
    let token = token.trim_end_matches(['\r', '\n']);
    if token.is_empty() {
        anyhow::bail!("no token on stdin");
    }
    println!("{}", plugbus::config::hash_token(token));
    Ok(ExitCode::SUCCESS)
}
