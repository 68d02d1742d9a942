//! The coordinator measured through its gRPC service, over loopback TLS,
//! against a real Postgres, driven by the client library — in one process
//! and one run:
//!
//! 1. a random anchor checkpoint and a random expert of a wide configuration
//!    (hidden 1024, FFN 2816, as many layers as the requested size needs);
//!    `sha256sum` of the expert: the ceiling (and `openssl dgst -sha256`,
//!    which uses SHA-NI where coreutils may not);
//! 2. the expert uploaded to a coordinator serving that anchor (validation,
//!    blob store, ledger, a published version): MB/s, ratio to `sha256sum`,
//!    and the process's peak RSS over the upload;
//! 3. the published version (anchor + expert) downloaded to a file: MB/s;
//! 4. the withdrawal of that expert (a replacement version, the 1 GiB blob
//!    erased): ms;
//! 5. on a second coordinator with a tiny anchor, 64 experts uploaded, then
//!    a withdrawal (→ a version of 63) and one more upload (→ a version of
//!    64): ms per call, beside a consent grant (one append) for comparison;
//! 6. consent grants from 4 concurrent clients: ledger appends per second.
//!
//! ```text
//! cargo bench --workspace --bench service                                   # 1 GiB expert
//! TRIBUTARY_BENCH_EXPERT_MIB=64 cargo bench --workspace --bench service     # quick run
//! ```
//! `TRIBUTARY_BENCH_DIR` chooses where the files go (default: the system
//! temporary directory; the 1 GiB case needs about 9 GB there);
//! `TRIBUTARY_BENCH_APPENDS` the number of grants in step 6 (default 500);
//! `DATABASE_URL` the Postgres server (default
//! `postgres://postgres@127.0.0.1:5432/postgres`; a database is created and
//! dropped).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../tests/coordinator/servers.rs"]
#[allow(dead_code)]
mod servers;
#[path = "../tests/coordinator/support.rs"]
#[allow(dead_code)]
mod support;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{mb_per_s, mib};
use servers::{Options, TestServer, enrol, terms};
use tributary_client::Client;
use tributary_ledger::event::ExpertManifest;
use tributary_ledger::{ConsentId, Sha256Digest, SubmissionId};
use tributary_model::FlexOlmoConfig;
use tributary_protos::v1;

/// Largest gRPC message the benchmarked servers decode (uploads come in
/// 256 KiB chunks).
const MAX_MESSAGE: usize = 4 << 20;

/// What a measured future did to time and memory.
struct Measured<T> {
    value: T,
    elapsed: Duration,
    rss_before: f64,
    peak: f64,
}

/// Runs `future` with the peak RSS reset first.
async fn measured<T>(future: impl Future<Output = T>) -> Measured<T> {
    let reset = common::reset_peak_rss();
    let rss_before = common::rss_mib();
    let t = Instant::now();
    let value = future.await;
    let elapsed = t.elapsed();
    let peak = if reset {
        common::peak_rss_mib()
    } else {
        f64::NAN
    };
    Measured {
        value,
        elapsed,
        rss_before,
        peak,
    }
}

fn options(anchor: &Path, work: &Path) -> Options {
    Options {
        max_message_bytes: MAX_MESSAGE,
        anchor: anchor.to_path_buf(),
        base: Some(work.to_path_buf()),
        ..Options::default()
    }
}

/// Grants research consent `c-{id}` for `manifest`'s expert.
async fn grant_for(client: &Client, id: &str, manifest: &ExpertManifest) {
    let contributor = client.signer().unwrap().key_id().to_string();
    let mut consent = terms(&format!("c-{id}"), &contributor, b"");
    consent.expert = manifest.total;
    client.grant_consent(consent).await.unwrap();
}

/// Uploads submission `id` from `path`; panics unless it is accepted.
async fn upload(client: &Client, id: &str, manifest: &ExpertManifest, path: &Path) {
    let status = client
        .upload_expert(&SubmissionId::new(id).unwrap(), manifest, path)
        .await
        .unwrap();
    assert_eq!(
        status.state,
        v1::SubmissionState::Accepted as i32,
        "{status:?}"
    );
}

async fn withdraw(client: &Client, id: &str) -> v1::WithdrawConsentResponse {
    client
        .withdraw_consent(&ConsentId::new(format!("c-{id}")).unwrap())
        .await
        .unwrap()
}

async fn head_version(client: &Client) -> v1::ModelVersion {
    client
        .list_versions("research", false)
        .await
        .unwrap()
        .into_iter()
        .next()
        .unwrap()
}

/// Steps 1-4: the wide expert's upload, download and withdrawal.
async fn wide(work: &Path, mib_asked: usize) {
    let config = common::wide_config(mib_asked);
    let anchor_dir = work.join("wide-anchor");
    let expert = work.join("wide-expert.safetensors");
    let t = Instant::now();
    let (anchor, anchor_size) = common::write_anchor(&anchor_dir, &config, 1);
    let (manifest, size) = common::write_expert(&expert, &config, anchor, 2);
    println!(
        "wide configuration: {} layers, hidden {}, FFN {}; anchor {:.1} MiB, expert {:.1} MiB; \
         written in {:.1?}",
        config.num_hidden_layers,
        common::HIDDEN,
        common::INTER,
        mib(anchor_size),
        mib(size),
        t.elapsed()
    );
    let ceiling = common::sha256sum(&expert, &manifest.total.0);
    if let Some(d) = ceiling {
        println!(
            "sha256sum of the expert:  {:8.1} MB/s ({d:.2?})  <- the ceiling",
            mb_per_s(size, d)
        );
    }
    if let Some(d) = common::openssl_sha256(&expert, &manifest.total.0) {
        println!(
            "openssl dgst -sha256:     {:8.1} MB/s ({d:.2?})  <- SHA-256 with SHA-NI",
            mb_per_s(size, d)
        );
    }

    let t = Instant::now();
    let server = TestServer::start(options(&anchor_dir, work)).await;
    println!(
        "coordinator started (anchor loaded and stored) in {:.1?}",
        t.elapsed()
    );
    let alice = enrol(&server, &server.client().await, "alice", 2).await;
    grant_for(&alice, "wide", &manifest).await;

    let up = measured(upload(&alice, "wide", &manifest, &expert)).await;
    print!(
        "upload + validation:      {:8.1} MB/s ({:.2?}), quality gate off",
        mb_per_s(size, up.elapsed),
        up.elapsed
    );
    match ceiling {
        Some(d) => println!(
            "; / sha256sum = {:.2}",
            d.as_secs_f64() / up.elapsed.as_secs_f64()
        ),
        None => println!(),
    }
    println!(
        "  process RSS: {:.0} MiB before, peak {:.0} MiB during (+{:.0} MiB); client and \
         coordinator share the process, the client streams the file in 256 KiB chunks",
        up.rss_before,
        up.peak,
        up.peak - up.rss_before
    );

    let version = head_version(&alice).await;
    let out = work.join("download");
    let down = measured(alice.download_version(version.version, &out)).await;
    let bytes: u64 = down.value.unwrap().iter().map(|f| f.size).sum();
    println!(
        "download of version {} ({:.1} MiB): {:8.1} MB/s ({:.2?}); RSS {:.0} MiB before, peak \
         {:.0} MiB",
        version.version,
        mib(bytes),
        mb_per_s(bytes, down.elapsed),
        down.elapsed,
        down.rss_before,
        down.peak
    );
    std::fs::remove_dir_all(&out).unwrap();

    let t = Instant::now();
    let withdrawn = withdraw(&alice, "wide").await;
    assert!(withdrawn.erasure.is_some());
    println!(
        "withdrawal of the {:.0} MiB expert (replacement version {:?}, blob erased): {:.1?}",
        mib(size),
        withdrawn.published_versions,
        t.elapsed()
    );
    server.stop().await;
}

/// A tiny anchor configuration: 2 layers, hidden 64, FFN 128.
fn tiny_config() -> FlexOlmoConfig {
    FlexOlmoConfig::new(256, 64, 128, 2, 4, 1, 1, 64)
}

/// Writes tiny expert `i` and returns its path and manifest.
fn tiny_expert(work: &Path, anchor: Sha256Digest, i: u64) -> (PathBuf, ExpertManifest) {
    let path = work.join(format!("tiny-{i}.safetensors"));
    let (manifest, _) = common::write_expert(&path, &tiny_config(), anchor, 100 + i);
    (path, manifest)
}

/// The median time of `n` runs of `call`.
async fn median_of<F: Future>(n: u8, mut call: impl FnMut(u8) -> F) -> Duration {
    let mut times = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        call(i).await;
        times.push(t.elapsed());
    }
    times.sort();
    times[times.len() / 2]
}

/// Step 5: publishing versions of 64 experts through the service.
async fn publishing(alice: &Client, work: &Path, anchor: Sha256Digest) {
    let mut uploads = Vec::new();
    for i in 0..64 {
        let (path, manifest) = tiny_expert(work, anchor, i);
        let t = Instant::now();
        let id = format!("t{i}");
        grant_for(alice, &id, &manifest).await;
        upload(alice, &id, &manifest, &path).await;
        uploads.push(t.elapsed());
    }
    assert_eq!(head_version(alice).await.experts.len(), 64);
    let read = median_of(20, |_| async { alice.checkpoint().await.unwrap() }).await;
    let grant = median_of(20, |i| async move {
        let consent = terms(&format!("g{i}"), "alice", &[i]);
        alice.grant_consent(consent).await.unwrap()
    })
    .await;
    let t = Instant::now();
    let withdrawn = withdraw(alice, "t0").await;
    let withdrawal = t.elapsed();
    assert_eq!(head_version(alice).await.experts.len(), 63);
    assert!(withdrawn.erasure.is_some());
    let (path, manifest) = tiny_expert(work, anchor, 64);
    grant_for(alice, "t64", &manifest).await;
    let t = Instant::now();
    upload(alice, "t64", &manifest, &path).await;
    let accept = t.elapsed();
    assert_eq!(head_version(alice).await.experts.len(), 64);
    println!(
        "publishing with 64 experts listed (tiny experts, {} bytes each; whole calls):",
        std::fs::metadata(&path).unwrap().len()
    );
    for (what, time) in [
        ("read the checkpoint, no append (median of 20)", read),
        ("consent grant, one append (median of 20)", grant),
        ("grant + upload -> version of 1 expert (first)", uploads[0]),
        ("grant + upload -> version of 64 (64th)", uploads[63]),
        ("withdrawal -> version of 63, 1 blob erased", withdrawal),
        ("upload -> version of 64 (grant done before)", accept),
    ] {
        println!("  {what:<48} {time:8.2?}");
    }
}

/// Step 6: `total` consent grants from `clients` concurrent clients.
async fn appends(server: &TestServer, clients: u8, total: usize) {
    let mut enrolled = Vec::new();
    for c in 0..clients {
        let base = server.client().await;
        enrolled.push(
            enrol(
                server,
                &base,
                &format!("load-{clients}-{c}"),
                50 + clients * 10 + c,
            )
            .await,
        );
    }
    let per = total / usize::from(clients);
    let t = Instant::now();
    futures::future::join_all(enrolled.iter().enumerate().map(|(c, client)| async move {
        let name = client.signer().unwrap().key_id().to_string();
        for k in 0..per {
            let id = format!("a-{c}-{k}");
            client
                .grant_consent(terms(&format!("{name}-{k}"), &name, id.as_bytes()))
                .await
                .unwrap();
        }
    }))
    .await;
    let elapsed = t.elapsed();
    let done = per * usize::from(clients);
    println!(
        "ledger appends through the service, {clients} client(s): {done} grants in {elapsed:.2?} \
         = {:.0} appends/s",
        done as f64 / elapsed.as_secs_f64()
    );
}

/// Steps 5 and 6 on a coordinator with a tiny anchor.
async fn tiny(work: &Path, grants: usize) {
    let anchor_dir = work.join("tiny-anchor");
    let (anchor, _) = common::write_anchor(&anchor_dir, &tiny_config(), 3);
    let server = TestServer::start(options(&anchor_dir, work)).await;
    let alice = enrol(&server, &server.client().await, "alice", 2).await;
    publishing(&alice, work, anchor).await;
    appends(&server, 1, grants / 4).await;
    appends(&server, 4, grants).await;
    server.stop().await;
}

fn main() {
    let mib_asked = common::expert_mib(1024);
    let grants = std::env::var("TRIBUTARY_BENCH_APPENDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let work = tempfile::tempdir_in(common::bench_base()).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "coordinator service bench: {} cores, files in {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        work.path().display()
    );
    runtime.block_on(async {
        wide(work.path(), mib_asked).await;
        tiny(work.path(), grants).await;
    });
}
