//! [`ConnectArgs`]: the command-line flags every client tool shares to reach
//! a coordinator (URL, CA, optional mTLS identity), and [`ConnectArgs::connect`].

use std::path::PathBuf;

use crate::client::Client;
use crate::error::ClientError;
use crate::tls::ClientTls;

/// Where the coordinator is and how to trust it.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    /// The coordinator's gRPC URL, e.g. `https://localhost:50051`
    /// (`http://` only for a server started with `--insecure-plaintext`).
    #[arg(long, env = "TRIBUTARY_URL")]
    pub url: String,
    /// PEM file of the CA that signed the coordinator's certificate
    /// (`ca.pem` written by `coordinator dev-ca`); required for `https://`.
    #[arg(long, env = "TRIBUTARY_CA")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) to present when the coordinator requires mTLS.
    #[arg(long, env = "TRIBUTARY_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Key (PEM) of `--client-cert`.
    #[arg(long, env = "TRIBUTARY_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

impl ConnectArgs {
    /// Flags for `url` trusting `ca`, without a client certificate.
    pub fn new(url: impl Into<String>, ca: Option<PathBuf>) -> Self {
        Self {
            url: url.into(),
            ca,
            client_cert: None,
            client_key: None,
        }
    }

    /// The TLS settings these flags describe (`None`: plaintext).
    pub fn tls(&self) -> Result<Option<ClientTls>, ClientError> {
        let Some(ca) = &self.ca else {
            if self.url.starts_with("https:") {
                return Err(ClientError::Config(format!(
                    "{} is https: give the CA certificate that signed the server's (--ca)",
                    self.url
                )));
            }
            return Ok(None);
        };
        let tls = ClientTls::new(ca);
        Ok(Some(match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => tls.with_identity(cert, key),
            _ => tls,
        }))
    }

    /// Connects to the coordinator (no signer yet).
    pub async fn connect(&self) -> Result<Client, ClientError> {
        Client::connect(&self.url, self.tls()?.as_ref()).await
    }
}
