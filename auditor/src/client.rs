//! The HTTP client of the tlog-tiles read side: one keep-alive `ureq` agent
//! over a base URL, TLS through rustls with the webpki roots or, with `--ca`,
//! only the certificates of a PEM file (e.g. the coordinator's development CA).

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use ureq::Agent;
use ureq::tls::{PemItem, RootCerts, TlsConfig, parse_pem};

/// The largest resource read: a full bundle of 256 entries of 65,535 bytes
/// each with their length prefixes, rounded up.
pub const MAX_BODY: u64 = 17 << 20;

/// Why one resource could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The connection, TLS or the body read failed.
    #[error("GET {url}: {source}")]
    Transport {
        /// The URL requested.
        url: String,
        /// What failed.
        source: Box<ureq::Error>,
    },
    /// The server answered with another status than 200.
    #[error("GET {url}: HTTP {status}: {body}")]
    Status {
        /// The URL requested.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the error body.
        body: String,
    },
}

/// Fetches resources below one log prefix.
pub struct TileClient {
    agent: Agent,
    base: String,
}

impl TileClient {
    /// A client for the log at `base` (e.g. `http://127.0.0.1:8081`), trusting
    /// the certificates of the PEM file `ca` if given, else the webpki roots.
    pub fn new(base: &str, ca: Option<&Path>) -> anyhow::Result<Self> {
        let mut config = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .user_agent(concat!("tributary-auditor/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading the CA file {}", path.display()))?;
            let mut certs = Vec::new();
            for item in parse_pem(&pem) {
                if let PemItem::Certificate(cert) =
                    item.with_context(|| format!("parsing the CA file {}", path.display()))?
                {
                    certs.push(cert);
                }
            }
            anyhow::ensure!(
                !certs.is_empty(),
                "the CA file {} holds no certificate",
                path.display()
            );
            let tls = TlsConfig::builder()
                .root_certs(RootCerts::new_with_certs(&certs))
                .build();
            config = config.tls_config(tls);
        }
        Ok(Self {
            agent: config.build().into(),
            base: base.trim_end_matches('/').to_string(),
        })
    }

    /// The full URL of a path below the prefix.
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    /// GETs a resource; anything but `200 OK` is an error.
    pub fn get(&self, path: &str) -> Result<Vec<u8>, FetchError> {
        let url = self.url(path);
        let transport = |source: ureq::Error| FetchError::Transport {
            url: url.clone(),
            source: Box::new(source),
        };
        let mut response = self.agent.get(&url).call().map_err(transport)?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map_err(transport)?;
        if status != 200 {
            let text = String::from_utf8_lossy(&body);
            return Err(FetchError::Status {
                url,
                status,
                body: text.trim().chars().take(300).collect(),
            });
        }
        Ok(body)
    }
}
