//! The coordinator's Prometheus metrics: counters and histograms kept in
//! atomics (no registry crate), rendered in the text exposition format by
//! [`Metrics::render`] for `/metrics`, and [`TimedLayer`], the tower layer
//! that times every gRPC call by method and outcome.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::codegen::http;
use tributary_client::REASON_METADATA_KEY;

/// Upper bounds (seconds) of the latency buckets.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 300.0,
];

/// A latency histogram with the fixed [`BUCKETS`].
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let total = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {total}", braces(labels));
    }
}

/// Everything `/metrics` reports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Entries in the ledger after the last commit.
    pub ledger_size: AtomicU64,
    /// Payload bytes received by uploads.
    pub upload_bytes: AtomicU64,
    /// Uploads decided, by outcome (`accepted` or the reason code).
    uploads: Mutex<BTreeMap<String, u64>>,
    /// Time from an upload's first message to its decision.
    pub upload_seconds: Histogram,
    /// Time the quality gate took per upload.
    pub gate_seconds: Histogram,
    /// gRPC calls by (method, status code): their latency to the response headers.
    requests: Mutex<BTreeMap<(String, String), Arc<Histogram>>>,
    /// Versions published by the batch publisher.
    pub batch_versions: AtomicU64,
    /// Consents ended by the expiry task.
    pub consents_expired: AtomicU64,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Escapes a label value.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

impl Metrics {
    /// Counts one decided upload.
    pub fn count_upload(&self, outcome: &str) {
        *locked(&self.uploads)
            .entry(outcome.to_string())
            .or_default() += 1;
    }

    /// Uploads decided with `outcome` so far.
    pub fn uploads(&self, outcome: &str) -> u64 {
        locked(&self.uploads).get(outcome).copied().unwrap_or(0)
    }

    /// Records a gRPC call.
    pub fn observe_request(&self, method: &str, code: &str, elapsed: Duration) {
        let histogram = locked(&self.requests)
            .entry((method.to_string(), code.to_string()))
            .or_default()
            .clone();
        histogram.observe(elapsed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        gauge(
            &mut out,
            "tributary_ledger_entries",
            "gauge",
            "Entries in the consent ledger.",
            self.ledger_size.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "tributary_upload_bytes_total",
            "counter",
            "Expert payload bytes received.",
            self.upload_bytes.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "tributary_batch_versions_total",
            "counter",
            "Versions published by the batch publisher.",
            self.batch_versions.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "tributary_consents_expired_total",
            "counter",
            "Consents ended by the expiry task.",
            self.consents_expired.load(Ordering::Relaxed),
        );
        out.push_str(
            "# HELP tributary_uploads_total Uploads decided, by outcome (accepted or the reason code).\n\
             # TYPE tributary_uploads_total counter\n",
        );
        for (outcome, n) in locked(&self.uploads).iter() {
            let _ = writeln!(
                out,
                "tributary_uploads_total{{outcome=\"{}\"}} {n}",
                label(outcome)
            );
        }
        out.push_str(
            "# HELP tributary_upload_duration_seconds Time from an upload's header to its decision.\n\
             # TYPE tributary_upload_duration_seconds histogram\n",
        );
        self.upload_seconds
            .render(&mut out, "tributary_upload_duration_seconds", "");
        out.push_str(
            "# HELP tributary_quality_gate_duration_seconds Time of the quality gate per upload.\n\
             # TYPE tributary_quality_gate_duration_seconds histogram\n",
        );
        self.gate_seconds
            .render(&mut out, "tributary_quality_gate_duration_seconds", "");
        out.push_str(
            "# HELP tributary_grpc_request_duration_seconds gRPC calls by method and status code, \
             time to the response headers.\n\
             # TYPE tributary_grpc_request_duration_seconds histogram\n",
        );
        for ((method, code), histogram) in locked(&self.requests).iter() {
            let labels = format!("method=\"{}\",code=\"{}\"", label(method), label(code));
            histogram.render(&mut out, "tributary_grpc_request_duration_seconds", &labels);
        }
        out
    }
}

/// Times every gRPC call into [`Metrics`], and gives the statuses tonic
/// produces itself for oversized messages our `MESSAGE_TOO_LARGE` reason code.
#[derive(Clone, Debug)]
pub struct TimedLayer(pub Arc<crate::service::AppState>);

impl<S> tower::Layer<S> for TimedLayer {
    type Service = Timed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timed {
            inner,
            state: self.0.clone(),
        }
    }
}

/// The service [`TimedLayer`] wraps around the router.
#[derive(Clone, Debug)]
pub struct Timed<S> {
    inner: S,
    state: Arc<crate::service::AppState>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Timed<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_string();
        let started = Instant::now();
        let state = self.state.clone();
        let call = self.inner.call(request);
        Box::pin(async move {
            let mut response = call.await?;
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|c| c.to_str().ok())
                .unwrap_or("0")
                .to_string();
            // tonic refuses oversized messages itself (OUT_OF_RANGE, or
            // RESOURCE_EXHAUSTED); the services never answer these codes
            // without a reason of their own.
            if matches!(code.as_str(), "8" | "11")
                && !response.headers().contains_key(REASON_METADATA_KEY)
            {
                response.headers_mut().insert(
                    REASON_METADATA_KEY,
                    http::HeaderValue::from_static("MESSAGE_TOO_LARGE"),
                );
            }
            state
                .metrics
                .observe_request(&method, &code, started.elapsed());
            Ok(response)
        })
    }
}
