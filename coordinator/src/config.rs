//! Configuration of `coordinator serve`: command-line flags, each with an
//! environment variable, over an optional TOML file (`--config`) whose keys
//! are the flags' long names. A flag or variable wins over the file; the file
//! wins over the defaults. [`ServeArgs::resolve`] turns them into a checked
//! [`ServeConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::service::Limits;

/// Flags of `coordinator serve` (and keys of its TOML file).
#[derive(clap::Args, Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys are the long flag
    /// names, e.g. `listen = "0.0.0.0:50051"`); flags and environment win.
    #[arg(long, env = "TRIBUTARY_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address of the gRPC API [default: 127.0.0.1:50051].
    #[arg(long, env = "TRIBUTARY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address of the read-only HTTP side (tlog-tiles and /metrics); off when unset.
    #[arg(long, env = "TRIBUTARY_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Postgres URL, e.g. `postgres://postgres@127.0.0.1:5432/tributary`.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Directory of the content-addressed blob store [default: ./blobs].
    #[arg(long, env = "TRIBUTARY_BLOB_DIR")]
    pub blob_dir: Option<PathBuf>,
    /// Blob store as an object_store URL instead of a directory, e.g.
    /// `s3://bucket/prefix` (S3 needs the coordinator built with the `aws`
    /// feature; region, endpoint and credentials come from the `AWS_*`
    /// environment variables) or `file:///srv/blobs`. Wins over --blob-dir.
    #[arg(long, env = "TRIBUTARY_BLOB_URL")]
    pub blob_url: Option<String>,
    /// Anchor checkpoint directory uploads are validated against (its files
    /// are stored as blobs and it is recorded as the current anchor — unless
    /// it was stored before and another anchor has been made current since,
    /// by PublishAnchor, which then stays current).
    #[arg(long, env = "TRIBUTARY_ANCHOR")]
    pub anchor: Option<PathBuf>,
    /// PEM certificate (chain) of the gRPC server.
    #[arg(long, env = "TRIBUTARY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the gRPC server.
    #[arg(long, env = "TRIBUTARY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA whose client certificates are required (turns on mTLS).
    #[arg(long, env = "TRIBUTARY_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// The operator's key file (from `coordinator dev-ca`): seals ledger
    /// entries, signs invites and checkpoints; its name is the log's origin.
    #[arg(long, env = "TRIBUTARY_OPERATOR_KEY")]
    pub operator_key: Option<PathBuf>,
    /// Serve gRPC without TLS. Only for a trusted local network or a TLS-terminating proxy.
    #[arg(long, env = "TRIBUTARY_INSECURE_PLAINTEXT")]
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// How far a signed request's timestamp may be from the server's clock, in seconds [default: 300].
    #[arg(long, env = "TRIBUTARY_REQUEST_WINDOW_SECS")]
    pub request_window_secs: Option<u32>,
    /// Largest gRPC message accepted, in bytes [default: 4194304].
    #[arg(long, env = "TRIBUTARY_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Largest expert payload accepted, in bytes [default: 8 GiB].
    #[arg(long, env = "TRIBUTARY_MAX_UPLOAD_BYTES")]
    pub max_upload_bytes: Option<u64>,
    /// Uploads validated at the same time; more are refused with
    /// UNAVAILABLE / TOO_MANY_UPLOADS, to retry [default: 4].
    #[arg(long, env = "TRIBUTARY_MAX_CONCURRENT_UPLOADS")]
    pub max_concurrent_uploads: Option<usize>,
    /// Smallest accepted ratio of an expert tensor's L2 norm to the anchor's
    /// public FFN tensor (router row: to `r_pub`) [default: 0.1].
    #[arg(long, env = "TRIBUTARY_NORM_RATIO_MIN")]
    pub norm_ratio_min: Option<f64>,
    /// Largest accepted norm ratio (see --norm-ratio-min) [default: 10].
    #[arg(long, env = "TRIBUTARY_NORM_RATIO_MAX")]
    pub norm_ratio_max: Option<f64>,
    /// Public validation text (.txt, .jsonl with a `text` field, or
    /// directories of them) for the quality gate: an upload must not raise its
    /// perplexity by more than --gate-max-perplexity-increase nor capture more
    /// than --gate-max-routing-share of its tokens. Without it the gate is off.
    /// Read with the current anchor's tokenizer (--anchor's at start); an
    /// anchor under which it gives fewer tokens than one scoring window is
    /// refused as current (GATE_TEXT_TOO_SHORT).
    #[arg(long, env = "TRIBUTARY_PUBLIC_VALIDATION", num_args = 1.., value_delimiter = ',')]
    #[serde(default)]
    pub public_validation: Vec<PathBuf>,
    /// Largest accepted relative rise of public perplexity [default: 0.05].
    #[arg(long, env = "TRIBUTARY_GATE_MAX_PERPLEXITY_INCREASE")]
    pub gate_max_perplexity_increase: Option<f64>,
    /// Largest share of public tokens (in any layer) whose first choice may
    /// be the new expert [default: 0.5].
    #[arg(long, env = "TRIBUTARY_GATE_MAX_ROUTING_SHARE")]
    pub gate_max_routing_share: Option<f64>,
    /// Tokens of public validation text the gate scores [default: 16384].
    #[arg(long, env = "TRIBUTARY_GATE_TOKENS")]
    pub gate_tokens: Option<usize>,
    /// Publish accepted experts in batches, every this many seconds, instead
    /// of one version per upload [default: immediate].
    #[arg(long, env = "TRIBUTARY_PUBLISH_EVERY_SECS")]
    pub publish_every_secs: Option<u64>,
    /// How often expired consents are looked for, in seconds [default: 30].
    #[arg(long, env = "TRIBUTARY_EXPIRY_CHECK_SECS")]
    pub expiry_check_secs: Option<u64>,
}

/// The quality gate's settings.
#[derive(Clone, Debug)]
pub struct GateSettings {
    /// Public validation text files.
    pub texts: Vec<PathBuf>,
    /// Tokens scored at most.
    pub max_tokens: usize,
    /// Thresholds.
    pub config: crate::validate::QualityGateConfig,
}

/// TLS files of the gRPC server.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// CA of required client certificates (mTLS), if any.
    pub client_ca: Option<PathBuf>,
}

/// A checked configuration of the service.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// gRPC address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// HTTP address, if the HTTP side is on.
    pub http_listen: Option<SocketAddr>,
    /// Postgres URL.
    pub database_url: String,
    /// Blob directory.
    pub blob_dir: PathBuf,
    /// Blob store URL (wins over `blob_dir`).
    pub blob_url: Option<String>,
    /// Anchor checkpoint directory; without it uploads are refused.
    pub anchor: Option<PathBuf>,
    /// TLS, `None` only with `--insecure-plaintext`.
    pub tls: Option<ServerTls>,
    /// Operator key file.
    pub operator_key: PathBuf,
    /// Largest gRPC message, in bytes.
    pub max_message_bytes: usize,
    /// Limits of the service.
    pub limits: Limits,
    /// The quality gate, if on.
    pub gate: Option<GateSettings>,
    /// Batch publishing interval (`None`: a version per accepted upload).
    pub publish_every: Option<std::time::Duration>,
    /// Interval of the consent expiry check.
    pub expiry_check: std::time::Duration,
}

impl ServeArgs {
    /// Takes each setting from the flags, else the file, else the default.
    pub fn resolve(self) -> Result<ServeConfig> {
        let file: ServeArgs = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => ServeArgs::default(),
        };
        let database_url = self
            .database_url
            .or(file.database_url)
            .context("no database: set --database-url or DATABASE_URL")?;
        let operator_key = self
            .operator_key
            .or(file.operator_key)
            .context("no operator key: set --operator-key (see `coordinator dev-ca`)")?;
        let insecure = self.insecure_plaintext || file.insecure_plaintext;
        let cert = self.tls_cert.or(file.tls_cert);
        let key = self.tls_key.or(file.tls_key);
        let client_ca = self.client_ca.or(file.client_ca);
        let tls = match (cert, key, insecure) {
            (Some(cert), Some(key), false) => Some(ServerTls {
                cert,
                key,
                client_ca,
            }),
            (None, None, true) => None,
            (_, _, true) => bail!("--insecure-plaintext cannot be combined with TLS files"),
            _ => bail!(
                "TLS needs both --tls-cert and --tls-key (or, explicitly, --insecure-plaintext)"
            ),
        };
        let defaults = Limits::default();
        let norm_min = self.norm_ratio_min.or(file.norm_ratio_min);
        let norm_max = self.norm_ratio_max.or(file.norm_ratio_max);
        let (lo, hi) = (
            norm_min.unwrap_or(*defaults.norm_ratio.start()),
            norm_max.unwrap_or(*defaults.norm_ratio.end()),
        );
        if !(0.0 < lo && lo < hi) {
            bail!("--norm-ratio-min must be positive and below --norm-ratio-max");
        }
        let texts = if self.public_validation.is_empty() {
            file.public_validation
        } else {
            self.public_validation
        };
        let gate_defaults = crate::validate::QualityGateConfig::default();
        let gate = (!texts.is_empty()).then(|| GateSettings {
            texts,
            max_tokens: self.gate_tokens.or(file.gate_tokens).unwrap_or(16384),
            config: crate::validate::QualityGateConfig {
                max_perplexity_increase: self
                    .gate_max_perplexity_increase
                    .or(file.gate_max_perplexity_increase)
                    .unwrap_or(gate_defaults.max_perplexity_increase),
                max_routing_share: self
                    .gate_max_routing_share
                    .or(file.gate_max_routing_share)
                    .unwrap_or(gate_defaults.max_routing_share),
                ..gate_defaults
            },
        });
        let secs = std::time::Duration::from_secs;
        Ok(ServeConfig {
            gate,
            publish_every: self
                .publish_every_secs
                .or(file.publish_every_secs)
                .filter(|s| *s > 0)
                .map(secs),
            expiry_check: secs(
                self.expiry_check_secs
                    .or(file.expiry_check_secs)
                    .unwrap_or(30)
                    .max(1),
            ),
            listen: self
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 50051))),
            http_listen: self.http_listen.or(file.http_listen),
            database_url,
            blob_url: self.blob_url.or(file.blob_url),
            blob_dir: self
                .blob_dir
                .or(file.blob_dir)
                .unwrap_or_else(|| PathBuf::from("blobs")),
            anchor: self.anchor.or(file.anchor),
            tls,
            operator_key,
            max_message_bytes: self
                .max_message_bytes
                .or(file.max_message_bytes)
                .unwrap_or(4 << 20),
            limits: Limits {
                request_window_ms: i64::from(
                    self.request_window_secs
                        .or(file.request_window_secs)
                        .unwrap_or(300),
                ) * 1000,
                max_page: defaults.max_page,
                max_upload_bytes: self
                    .max_upload_bytes
                    .or(file.max_upload_bytes)
                    .unwrap_or(defaults.max_upload_bytes),
                max_concurrent_uploads: self
                    .max_concurrent_uploads
                    .or(file.max_concurrent_uploads)
                    .unwrap_or(defaults.max_concurrent_uploads),
                norm_ratio: lo..=hi,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_tls_is_required() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:7000\"\ndatabase-url = \"postgres://file\"\noperator-key = \"op.key\"\n\
             tls-cert = \"s.pem\"\ntls-key = \"s.key\"\nrequest-window-secs = 10\n\
             norm-ratio-min = 0.5\npublic-validation = [\"public.jsonl\"]\npublish-every-secs = 60\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            database_url: Some("postgres://flag".into()),
            ..Default::default()
        };
        let config = args.resolve().unwrap();
        assert_eq!(config.database_url, "postgres://flag");
        assert_eq!(config.listen.port(), 7000);
        assert_eq!(config.limits.request_window_ms, 10_000);
        assert!(config.tls.is_some());
        assert_eq!(config.limits.norm_ratio, 0.5..=10.0);
        let gate = config.gate.as_ref().unwrap();
        assert_eq!(gate.texts, [PathBuf::from("public.jsonl")]);
        assert_eq!(gate.config.max_routing_share, 0.5);
        assert_eq!(
            config.publish_every,
            Some(std::time::Duration::from_secs(60))
        );
        assert_eq!(config.expiry_check, std::time::Duration::from_secs(30));
        let inverted = ServeArgs {
            config: Some(path.clone()),
            norm_ratio_max: Some(0.2),
            ..Default::default()
        };
        assert!(inverted.resolve().is_err(), "min above max is refused");

        std::fs::write(&path, "database-url = \"x\"\noperator-key = \"k\"\n").unwrap();
        let no_tls = ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        assert!(
            no_tls.resolve().is_err(),
            "no TLS and no explicit plaintext is refused"
        );
        std::fs::write(&path, "bogus = 1\n").unwrap();
        let unknown = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        assert!(unknown.resolve().is_err(), "unknown keys are refused");
    }
}
