//! Client TLS (rustls, through tonic): trust a CA file, optionally present a
//! client certificate for mTLS, and name the server to check its certificate.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// Where the client's TLS material is.
#[derive(Clone, Debug)]
pub struct ClientTls {
    /// PEM file of the CA that signed the server's certificate.
    pub ca_file: PathBuf,
    /// PEM certificate and key files presented to a server that asks for mTLS.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The server name to verify the certificate against; the URL's host when `None`.
    pub domain: Option<String>,
}

impl ClientTls {
    /// Trusts the CA in `ca_file`.
    pub fn new(ca_file: impl Into<PathBuf>) -> Self {
        Self {
            ca_file: ca_file.into(),
            identity: None,
            domain: None,
        }
    }

    /// Presents a client certificate (mTLS).
    pub fn with_identity(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.identity = Some((cert.into(), key.into()));
        self
    }

    /// Verifies the server's certificate for `domain`.
    pub fn with_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// Reads the files into tonic's rustls client configuration.
    pub fn load(&self) -> std::io::Result<ClientTlsConfig> {
        let read = |p: &Path| {
            std::fs::read(p)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
        };
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&self.ca_file)?));
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        Ok(config)
    }
}
