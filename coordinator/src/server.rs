//! [`serve`]: the running coordinator — gRPC (TLS by rustls, optional mTLS,
//! health, reflection, every `tributary.v1` service) and the optional HTTP
//! side — started from a [`ServeConfig`] and stopped by a shutdown future.
//! Tests bind `127.0.0.1:0` and read the bound addresses from [`Running`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tributary_protos::v1::anchor_service_server::AnchorServiceServer;
use tributary_protos::v1::consent_service_server::ConsentServiceServer;
use tributary_protos::v1::contributor_service_server::ContributorServiceServer;
use tributary_protos::v1::ledger_service_server::LedgerServiceServer;
use tributary_protos::v1::submission_service_server::SubmissionServiceServer;
use tributary_protos::v1::version_service_server::VersionServiceServer;

use crate::blobs::BlobStore;
use crate::config::GateSettings;
use crate::config::ServeConfig;
use crate::service::anchor::Anchors;
use crate::service::consent::Consents;
use crate::service::contributors::Contributors;
use crate::service::gate::Gate;
use crate::service::ledger::Ledger;
use crate::service::submissions::Submissions;
use crate::service::versions::Versions;
use crate::service::{AppState, Policy, tasks};
use crate::validate::AnchorReference;
use crate::{anchor_store, devca, http as http_side, store};

/// A started coordinator.
#[derive(Debug)]
pub struct Running {
    /// Where gRPC listens.
    pub grpc_addr: SocketAddr,
    /// Where the HTTP side listens, if on.
    pub http_addr: Option<SocketAddr>,
    /// The shared state (tests read the database pool from it).
    pub state: Arc<AppState>,
    task: JoinHandle<Result<()>>,
}

impl Running {
    /// Waits until the servers have stopped (after the shutdown future resolved).
    pub async fn wait(self) -> Result<()> {
        self.task.await.context("the server task panicked")?
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Connects to the database, applies the migrations, opens the ledger, binds
/// the listeners and serves until `shutdown` resolves; in-flight calls finish
/// before the servers stop.
pub async fn serve(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running> {
    let pool = store::connect(&config.database_url)
        .await
        .context("connecting to the database")?;
    store::migrate(&pool)
        .await
        .context("applying the migrations")?;
    let signer = devca::read_operator_key(&config.operator_key)?;
    let operator = devca::operator_signing_key(&config.operator_key)?;
    let blobs = match &config.blob_url {
        Some(url) => {
            let options = std::env::vars()
                .filter(|(k, _)| k.starts_with("AWS_"))
                .map(|(k, v)| (k.to_ascii_lowercase(), v));
            BlobStore::from_url(url, options)
                .with_context(|| format!("opening the blob store {url}"))?
        }
        None => BlobStore::open_local(&config.blob_dir)
            .with_context(|| format!("opening the blob store {}", config.blob_dir.display()))?,
    };
    let gate = match &config.gate {
        Some(settings) => Some(read_gate_text(settings, config.anchor.is_some()).await?),
        None => None,
    };
    let anchor = match &config.anchor {
        Some(dir) => Some(install_anchor(&pool, &blobs, dir, gate.as_ref()).await?),
        None => None,
    };
    let policy = Policy {
        limits: config.limits.clone(),
        gate,
        batched_publishing: config.publish_every.is_some(),
    };
    let state = AppState::open(pool, signer, operator, blobs, anchor, policy)
        .await
        .map_err(|e| anyhow::anyhow!("opening the ledger: {}", e.detail))?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let grpc_addr = listener.local_addr()?;
    let http_listener = match config.http_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?,
        ),
        None => None,
    };
    let http_addr = http_listener.as_ref().map(|l| l.local_addr()).transpose()?;

    let mut builder = Server::builder();
    if let Some(tls) = &config.tls {
        let mut tls_config =
            ServerTlsConfig::new().identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?));
        if let Some(ca) = &tls.client_ca {
            tls_config = tls_config.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        builder = builder.tls_config(tls_config).context("configuring TLS")?;
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ContributorServiceServer<Contributors>>()
        .await;
    health.set_serving::<ConsentServiceServer<Consents>>().await;
    health.set_serving::<LedgerServiceServer<Ledger>>().await;
    health.set_serving::<VersionServiceServer<Versions>>().await;
    health.set_serving::<AnchorServiceServer<Anchors>>().await;
    health
        .set_serving::<SubmissionServiceServer<Submissions>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tributary_protos::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;

    let max = config.max_message_bytes;
    let router = builder
        .layer(crate::metrics::TimedLayer(state.clone()))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            ContributorServiceServer::new(Contributors(state.clone()))
                .max_decoding_message_size(max),
        )
        .add_service(
            ConsentServiceServer::new(Consents(state.clone())).max_decoding_message_size(max),
        )
        .add_service(LedgerServiceServer::new(Ledger(state.clone())).max_decoding_message_size(max))
        .add_service(
            VersionServiceServer::new(Versions(state.clone())).max_decoding_message_size(max),
        )
        .add_service(
            AnchorServiceServer::new(Anchors(state.clone())).max_decoding_message_size(max),
        )
        .add_service(
            SubmissionServiceServer::new(Submissions(state.clone())).max_decoding_message_size(max),
        );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let http_task = http_listener.map(|listener| {
        let app = http_side::router(state.clone());
        let signal = stopped(stop_rx.clone());
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
        })
    });
    let background = tokio::spawn(tasks::run(
        state.clone(),
        tasks::Intervals {
            expiry: config.expiry_check,
            publish: config.publish_every,
        },
        stop_rx.clone(),
    ));
    // tonic ignores `Server::tcp_nodelay` for a listener passed in: set it
    // here, or Nagle's algorithm holds the end of each response until the
    // client's delayed ACK (about 40 ms on Linux) comes back.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let grpc_signal = stopped(stop_rx);
    tracing::info!(%grpc_addr, ?http_addr, tls = config.tls.is_some(), origin = %state.origin, "coordinator serving");
    let task = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, grpc_signal)
            .await
            .context("the gRPC server failed")?;
        background.await.context("the background task panicked")?;
        if let Some(http) = http_task {
            http.await
                .context("the HTTP task panicked")?
                .context("the HTTP server failed")?;
        }
        tracing::info!("coordinator stopped");
        Ok(())
    });
    Ok(Running {
        grpc_addr,
        http_addr,
        state,
        task,
    })
}

/// Loads the anchor checkpoint in `dir`, stores every file of it as a blob
/// (streamed) and records it in `anchors`, as the current anchor unless the
/// database already held it and has another one current: then a later
/// `PublishAnchor` made that one current, and a restart (or another
/// replica started with the same directory) keeps it and returns it.
/// Running it again with the same directory changes nothing.
///
/// With a quality `gate`, the anchor that is to be current must read the
/// gate's text as at least one scoring window; otherwise the start fails
/// before anything is written: no row, no current anchor, no blob.
async fn install_anchor(
    pool: &sqlx::PgPool,
    blobs: &BlobStore,
    dir: &std::path::Path,
    gate: Option<&Gate>,
) -> Result<Arc<AnchorReference>> {
    let owned = dir.to_path_buf();
    let (anchor, tokenizer_json) =
        tokio::task::spawn_blocking(move || -> Result<(AnchorReference, Vec<u8>)> {
            let anchor = AnchorReference::load(&owned)?;
            let tokenizer = owned.join("tokenizer.json");
            let bytes = std::fs::read(&tokenizer)
                .with_context(|| format!("reading {}", tokenizer.display()))?;
            anchor_store::check_tokenizer(&bytes, anchor.config.vocab_size)?;
            Ok((anchor, bytes))
        })
        .await
        .context("the anchor loader panicked")?
        .with_context(|| format!("loading the anchor {}", dir.display()))?;
    let mut tx = pool.begin().await?;
    anchor_store::lock_publishing(&mut tx).await?;
    let (known, current) = anchor_store::known_and_current(&mut tx, &anchor.digest).await?;
    let kept = match current {
        Some(current) if known && current != anchor.digest => {
            anchor_store::find(&mut tx, Some(&current)).await?
        }
        _ => None,
    };
    let kept = match kept {
        Some(row) => Some(
            anchor_store::load_reference(blobs, &row.files)
                .await
                .with_context(|| format!("loading the current anchor {}", row.digest))?,
        ),
        None => None,
    };
    if let Some(gate) = gate {
        let tokens = match &kept {
            Some(current) => gate.public_tokens(blobs, current).await,
            None => gate.public_tokens_of(&anchor, tokenizer_json).await,
        }
        .context("the quality gate (--public-validation) cannot use the anchor")?;
        tracing::info!(tokens = tokens.len(), "quality gate on");
    }
    let files = anchor_store::store_dir(blobs, dir)
        .await
        .with_context(|| format!("storing the anchor {}", dir.display()))?;
    anchor_store::check_listing(&files, u64::MAX)
        .with_context(|| format!("the anchor {}", dir.display()))?;
    anchor_store::upsert(&mut tx, &anchor.digest, &files).await?;
    if let Some(current) = kept {
        tx.commit().await?;
        tracing::warn!(
            anchor = %anchor.digest,
            current = %current.digest,
            "--anchor {} was published before; the anchor made current since stays current",
            dir.display()
        );
        return Ok(current);
    }
    anchor_store::set_current(&mut tx, &anchor.digest).await?;
    tx.commit().await?;
    tracing::info!(anchor = %anchor.digest, files = files.len(), "anchor loaded");
    Ok(Arc::new(anchor))
}

/// Reads the public validation text of the quality gate; the anchor
/// installed next must tokenize it (see [`install_anchor`]).
async fn read_gate_text(settings: &GateSettings, has_anchor: bool) -> Result<Gate> {
    anyhow::ensure!(
        has_anchor,
        "the quality gate (--public-validation) needs --anchor: its tokenizer reads the text"
    );
    let texts = settings.texts.clone();
    let documents = tokio::task::spawn_blocking(move || tributary_corpus::read_documents(&texts))
        .await
        .context("the text reader panicked")?
        .context("reading the public validation text")?;
    Ok(Gate::new(
        settings.config.clone(),
        documents,
        settings.max_tokens,
    ))
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("shutdown requested");
}
