//! `keytrail seal-key`: creates the key pair that seals checkpoints on a token and writes
//! its public key (PEM) for `keytrail verify --seal-key`.

use super::text::outln;
use anyhow::{Context, Result, bail};
use keytrail::config::Config;
use keytrail::seal::{self, NewKey, SealAlg};
use std::path::PathBuf;

/// Options of `keytrail seal-key`. Values not given come from the `[seal]` section of the
/// configuration (the file `KEYTRAIL_CONFIG` names, or the default path).
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Creates, on the token, a token private key with CKA_SIGN true, CKA_EXTRACTABLE false, \
CKA_SENSITIVE true and CKA_PRIVATE true, and its public half, labelled --label with id \
--id; writes the public key (SubjectPublicKeyInfo, PEM) to --out. Refuses when a private \
key with that label or id exists already. Exit status 0 on success, 2 on any error.")]
pub struct SealKeyArgs {
    /// The PKCS#11 module ([seal] module, else the configured module).
    #[arg(long, value_name = "PATH")]
    pub module: Option<PathBuf>,
    /// The token's label ([seal] token_label).
    #[arg(long, value_name = "LABEL")]
    pub token: Option<String>,
    /// A file holding the user PIN, readable by its owner only ([seal] pin_file).
    #[arg(long, value_name = "FILE")]
    pub pin_file: Option<PathBuf>,
    /// CKA_LABEL of the key pair ([seal] key_label).
    #[arg(long, value_name = "LABEL")]
    pub label: Option<String>,
    /// CKA_ID of the key pair, hex ([seal] key_id; random when neither gives one).
    #[arg(long, value_name = "HEX")]
    pub id: Option<String>,
    /// The algorithm: p256 or ed25519 (default: p256 when the token offers it).
    #[arg(long, value_name = "ALG")]
    pub alg: Option<String>,
    /// Where to write the public key; stdout when absent.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Runs `keytrail seal-key`; returns the exit status.
pub fn run(a: &SealKeyArgs) -> Result<u8> {
    // The configuration only fills in what the command line leaves out.
    let loaded = Config::load();
    // Said when a value is missing, in case the configuration was meant to give it.
    let why = match &loaded {
        Ok(_) => String::new(),
        Err(e) => format!(" (the configuration was not read: {e})"),
    };
    let cfg = loaded.ok();
    let section = cfg.as_ref().and_then(|c| c.seal.clone());
    let module = a
        .module
        .clone()
        .or_else(|| section.as_ref().and_then(|s| s.module.clone()))
        .or_else(|| cfg.as_ref().map(|c| c.module.clone()))
        .with_context(|| format!("no module: give --module (or configure one){why}"))?;
    let token_label = a
        .token
        .clone()
        .or_else(|| section.as_ref().map(|s| s.token_label.clone()))
        .with_context(|| format!("no token: give --token (or [seal] token_label){why}"))?;
    let pin_file = a
        .pin_file
        .clone()
        .or_else(|| section.as_ref().map(|s| s.pin_file.clone()))
        .with_context(|| format!("no PIN file: give --pin-file (or [seal] pin_file){why}"))?;
    let label = a
        .label
        .clone()
        .or_else(|| section.as_ref().and_then(|s| s.key_label.clone()))
        .with_context(|| format!("no key label: give --label (or [seal] key_label){why}"))?;
    let id = match a
        .id
        .clone()
        .or_else(|| section.as_ref().and_then(|s| s.key_id.clone()))
    {
        Some(h) => Some(hex::decode(&h).with_context(|| format!("--id {h:?} is not hex"))?),
        None => None,
    };
    let alg = match a.alg.as_deref() {
        None => None,
        Some("p256" | "P-256" | "ecdsa-p256") => Some(SealAlg::P256),
        Some("ed25519" | "Ed25519") => Some(SealAlg::Ed25519),
        Some(other) => bail!("--alg {other:?}: use p256 or ed25519"),
    };
    let made = seal::create_key(&NewKey {
        module,
        token_label: token_label.clone(),
        pin_file,
        label: label.clone(),
        id,
        alg,
    })
    .map_err(anyhow::Error::msg)?;
    match &a.out {
        Some(p) => {
            std::fs::write(p, &made.public_pem)
                .with_context(|| format!("cannot write {}", p.display()))?;
            outln!(
                "created the {} sealing key {label:?} (id {}) on token {token_label:?}; public key in {}",
                made.alg.as_str(),
                hex::encode(&made.id),
                p.display()
            );
            outln!(
                "[seal] key_label = {label:?}, key_id = \"{}\"",
                hex::encode(&made.id)
            );
        }
        None => print!("{}", made.public_pem),
    }
    Ok(0)
}
