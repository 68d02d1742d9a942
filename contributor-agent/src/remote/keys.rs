//! The contributor's Ed25519 key on disk: `keygen` writes the secret seed
//! (hex, mode 0600) to `FILE`, the contributor id to `FILE.id` and the
//! public key (hex) to `FILE.pub`; the other commands read them back.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ed25519_dalek::SigningKey;
use tributary_client::RequestSigner;
use tributary_ledger::{ContributorId, PublicKey};

/// `FILE` + `suffix` (e.g. `key` → `key.id`).
fn beside(key: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(key.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

/// Where `keygen` stores the contributor id of a key file.
pub fn id_path(key: &Path) -> PathBuf {
    beside(key, ".id")
}

/// Where `keygen` stores the public key (hex) of a key file.
pub fn public_path(key: &Path) -> PathBuf {
    beside(key, ".pub")
}

/// Creates `path` (refusing to overwrite) with `mode` on Unix, and writes `text`.
fn create(path: &Path, text: &str, mode: u32) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// A public key as 64 hex digits (what `coordinator invite --public-key` takes).
pub fn public_hex(key: &PublicKey) -> String {
    hex::encode(key.0)
}

/// Generates a key for contributor `id` into `out` (+ `.id`, `.pub`); returns
/// its public half.
pub fn keygen(out: &Path, id: &str) -> Result<PublicKey> {
    let contributor = ContributorId::new(id).with_context(|| format!("contributor id {id:?}"))?;
    let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let public = PublicKey::of(&key);
    for path in [out.to_path_buf(), id_path(out), public_path(out)] {
        if path.exists() {
            bail!("{} exists; keygen never overwrites a key", path.display());
        }
    }
    create(out, &format!("{}\n", hex::encode(key.to_bytes())), 0o600)?;
    create(&id_path(out), &format!("{}\n", contributor.as_str()), 0o644)?;
    create(
        &public_path(out),
        &format!("{}\n", public_hex(&public)),
        0o644,
    )?;
    Ok(public)
}

/// Reads a key file written by [`keygen`].
pub fn load_key(path: &Path) -> Result<SigningKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the key {}", path.display()))?;
    let seed: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("{} is not a key written by keygen", path.display()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The contributor id: `id` when given, else the one stored beside the key.
pub fn contributor_id(key: &Path, id: Option<&str>) -> Result<ContributorId> {
    let text = match id {
        Some(id) => id.to_string(),
        None => {
            let path = id_path(key);
            std::fs::read_to_string(&path).with_context(|| {
                format!("no --id given and no {} to read it from", path.display())
            })?
        }
    };
    ContributorId::new(text.trim()).with_context(|| format!("contributor id {:?}", text.trim()))
}

/// The request signer for a key file and contributor id.
pub fn signer(key: &Path, id: Option<&str>) -> Result<RequestSigner> {
    let contributor = contributor_id(key, id)?;
    Ok(RequestSigner::new(contributor.as_str(), load_key(key)?))
}
