//! `coordinator dev-ca`: a development certificate authority, a server
//! certificate for `localhost` and `127.0.0.1`, a client certificate for mTLS
//! tests, and the operator's Ed25519 key — everything a local deployment or a
//! test needs. Secret files are written with mode 0600.
//!
//! Files in the output directory:
//! - `ca.pem`, `ca.key` — the CA (trust `ca.pem` on clients).
//! - `server.pem`, `server.key` — the server certificate and key.
//! - `client.pem`, `client.key` — a client certificate for mTLS.
//! - `operator.key` — the operator's key as a C2SP note signer key string
//!   (`PRIVATE+KEY+<origin>+…`); it seals entries and signs checkpoints.
//! - `operator.pub` — the matching verifier key string, for auditors.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ed25519_dalek::SigningKey;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tributary_ledger::NoteSigner;

/// The log origin used when none is given.
pub const DEFAULT_ORIGIN: &str = "localhost/tributary";

/// Arguments of `coordinator dev-ca`.
#[derive(clap::Args, Debug, Clone)]
pub struct DevCaArgs {
    /// Directory to write the files into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// The ledger's origin, the name under which the operator key signs checkpoints.
    #[arg(long, default_value = DEFAULT_ORIGIN)]
    pub origin: String,
    /// Extra DNS names or IP addresses for the server certificate.
    #[arg(long = "san")]
    pub extra_names: Vec<String>,
}

/// What `dev-ca` wrote.
#[derive(Debug, Clone)]
pub struct DevCa {
    /// `ca.pem`.
    pub ca_cert: PathBuf,
    /// `server.pem`.
    pub server_cert: PathBuf,
    /// `server.key`.
    pub server_key: PathBuf,
    /// `client.pem`.
    pub client_cert: PathBuf,
    /// `client.key`.
    pub client_key: PathBuf,
    /// `operator.key`.
    pub operator_key: PathBuf,
    /// `operator.pub`.
    pub operator_pub: PathBuf,
}

fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn leaf(
    names: Vec<String>,
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(names).context("certificate names")?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    Ok(params)
}

/// Creates the development CA, certificates and operator key in `args.out`.
pub fn create(args: &DevCaArgs) -> Result<DevCa> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let dir = &args.out;

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Tributary development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .context("signing the CA certificate")?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    names.extend(args.extra_names.iter().cloned());
    let server_key = KeyPair::generate().context("generating the server key")?;
    let server_cert = leaf(
        names,
        "tributary coordinator",
        ExtendedKeyUsagePurpose::ServerAuth,
    )?
    .signed_by(&server_key, &issuer)
    .context("signing the server certificate")?;

    let client_key = KeyPair::generate().context("generating the client key")?;
    let client_cert = leaf(
        Vec::new(),
        "tributary client",
        ExtendedKeyUsagePurpose::ClientAuth,
    )?
    .signed_by(&client_key, &issuer)
    .context("signing the client certificate")?;

    let operator = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let signer =
        NoteSigner::new(&args.origin, operator).context("the origin is not a valid note name")?;

    let out = DevCa {
        ca_cert: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
        operator_key: dir.join("operator.key"),
        operator_pub: dir.join("operator.pub"),
    };
    write_file(&out.ca_cert, ca_cert.pem().as_bytes(), false)?;
    write_file(&dir.join("ca.key"), ca_key_pem.as_bytes(), true)?;
    write_file(&out.server_cert, server_cert.pem().as_bytes(), false)?;
    write_file(&out.server_key, server_key.serialize_pem().as_bytes(), true)?;
    write_file(&out.client_cert, client_cert.pem().as_bytes(), false)?;
    write_file(&out.client_key, client_key.serialize_pem().as_bytes(), true)?;
    write_file(
        &out.operator_key,
        format!("{}\n", signer.to_key_string()).as_bytes(),
        true,
    )?;
    write_file(
        &out.operator_pub,
        format!("{}\n", signer.verifier().to_key_string()).as_bytes(),
        false,
    )?;
    Ok(out)
}

/// Reads an operator key file written by [`create`].
pub fn read_operator_key(path: &Path) -> Result<NoteSigner> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    NoteSigner::from_key_string(text.trim())
        .context("the operator key file is not a note signer key")
}

/// The Ed25519 signing key inside a note signer key string.
pub fn operator_signing_key(path: &Path) -> Result<SigningKey> {
    use base64::Engine as _;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // `PRIVATE+KEY+<name>+<hex id>+<base64>`: names hold no '+', base64 may.
    let encoded = text
        .trim()
        .strip_prefix("PRIVATE+KEY+")
        .and_then(|rest| rest.splitn(3, '+').nth(2))
        .context("the operator key file is not a note signer key")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .context("the operator key is not base64")?;
    let seed: [u8; 32] = raw
        .get(1..)
        .and_then(|s| s.try_into().ok())
        .context("the operator key is not an Ed25519 seed")?;
    Ok(SigningKey::from_bytes(&seed))
}
