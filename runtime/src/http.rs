//! The health and metrics endpoint of `picket run --listen ADDR`:
//!
//! - `GET /healthz`: 200 while the event loop turns, 503 once it has not for
//!   [`STALE_AFTER`] (a liveness probe restarts a stuck agent);
//! - `GET /readyz`: 200 once the probes are attached and the rules loaded, 503 before, while
//!   stopping, while blind (the hook did not report the canary open, [`crate::canary`]), and
//!   while an output has been failing for longer than `--output-unready-after`;
//! - `GET /metrics`: [`Metrics`] in the OpenMetrics text format, which Prometheus scrapes.
//!
//! It runs on its own thread with its own small runtime, so it answers even while the event loop
//! is busy, and says so when that loop is stuck instead of getting stuck with it.
//!
//! Whoever reaches the port (the agent binds it on the node's network) gets bounded resources:
//! at most [`MAX_CONNECTIONS`] connections at once, the longest-held giving way to a new one
//! (so clients that hold connections open, slowloris, cannot lock the kubelet's probes out);
//! a request head of at most [`MAX_HEAD_BYTES`] (larger is answered 431 and closed), sent
//! within [`HEADER_READ_TIMEOUT`]; and every connection, keep-alive included, closed after
//! [`CONNECTION_TIMEOUT`]. Memory is then bounded by about `MAX_CONNECTIONS` read buffers.

use crate::metrics::{Metrics, STALE_AFTER, global};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::AbortHandle;

/// Longest a client may take over one connection, keep-alive included (slow or idle clients
/// are dropped).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a client may take to send a request's head (request line and headers).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Most bytes of a request head, and of a connection's read buffer (hyper's least).
pub const MAX_HEAD_BYTES: usize = 8192;

/// Most headers in a request: the probes and Prometheus send a handful.
const MAX_HEADERS: usize = 32;

/// Most connections served at once. Past it, the connection held longest is closed for the new
/// one: a probe's or a scrape's connection lasts milliseconds, a slowloris one is the oldest.
pub const MAX_CONNECTIONS: usize = 64;

/// How often shedding connections is logged again.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// Binds `addr` now (so a taken port fails the start) and serves on a thread of its own.
/// Returns the bound address (the port chosen when `addr`'s is 0).
pub fn serve(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|err| anyhow::anyhow!("--listen {addr}: {err}"))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    std::thread::Builder::new()
        .name("picket-http".into())
        .spawn(move || runtime.block_on(accept(listener)))?;
    tracing::info!(address = %bound, "serving /healthz, /readyz and /metrics");
    Ok(bound)
}

async fn accept(listener: std::net::TcpListener) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!("health and metrics endpoint: {err}");
            return;
        }
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_header_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    let connections = Connections::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of descriptors, for example: wait instead of spinning.
                tracing::warn!("health and metrics endpoint: accepting a connection: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let id = connections.make_room();
        let connection = builder.serve_connection(TokioIo::new(stream), service_fn(respond));
        let done = connections.clone();
        let task = tokio::spawn(async move {
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
            done.remove(id);
        });
        connections.insert(id, task.abort_handle());
    }
}

/// The connections being served, oldest first, to close the oldest when there are too many.
/// All on the server's one thread: the lock is never contended.
#[derive(Clone, Default)]
struct Connections(Arc<Mutex<Open>>);

#[derive(Default)]
struct Open {
    by_age: BTreeMap<u64, AbortHandle>,
    next_id: u64,
    shed: u64,
    reported_at: Option<Instant>,
}

impl Connections {
    /// Closes the connections held longest until one more fits; returns the new one's id.
    fn make_room(&self) -> u64 {
        let mut open = self.lock();
        while open.by_age.len() >= MAX_CONNECTIONS {
            let Some((_, oldest)) = open.by_age.pop_first() else {
                break;
            };
            oldest.abort();
            open.shed += 1;
        }
        if open.shed > 0
            && open
                .reported_at
                .is_none_or(|at| at.elapsed() >= REPORT_EVERY)
        {
            tracing::warn!(
                closed = open.shed,
                "health and metrics endpoint: more than {MAX_CONNECTIONS} connections at once \
                 (a client holding them open?): closed the ones held longest"
            );
            open.shed = 0;
            open.reported_at = Some(Instant::now());
        }
        open.next_id += 1;
        open.next_id
    }

    fn insert(&self, id: u64, task: AbortHandle) {
        // A connection that already ended (removed itself) is not put back.
        if !task.is_finished() {
            self.lock().by_age.insert(id, task);
        }
    }

    fn remove(&self, id: u64) {
        self.lock().by_age.remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

async fn respond(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(answer(global(), request.method(), request.uri().path()))
}

/// The response to `method path`.
fn answer(metrics: &Metrics, method: &Method, path: &str) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    let (status, content_type, body) = match (method, path) {
        (&Method::GET, "/healthz") => match metrics.since_last_turn() {
            Some(ago) if ago < STALE_AFTER => (StatusCode::OK, TEXT, "ok\n".to_string()),
            Some(ago) => (
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("event loop stuck: last turned {ago:?} ago\n"),
            ),
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                "event loop not started\n".to_string(),
            ),
        },
        (&Method::GET, "/readyz") if metrics.ready() => {
            let failing = metrics.outputs_failing_too_long();
            if failing.is_empty() {
                (StatusCode::OK, TEXT, "ready\n".into())
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    format!("not ready: {}\n", failing.join("; ")),
                )
            }
        }
        (&Method::GET, "/readyz") if metrics.blind() => (
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "not ready: blind, the kernel hook did not report the agent's canary open \
             (picket_probe_blind; the log says why)\n"
                .into(),
        ),
        (&Method::GET, "/readyz") => (
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "not ready: probes or rules not loaded yet, or stopping\n".into(),
        ),
        (&Method::GET, "/metrics") => (StatusCode::OK, OPENMETRICS, metrics.encode()),
        (_, "/healthz" | "/readyz" | "/metrics") => {
            (StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n".into())
        }
        _ => (
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: /healthz, /readyz or /metrics\n".into(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    #[test]
    fn serves_health_readiness_and_metrics() {
        let addr = serve("127.0.0.1:0".parse().unwrap()).unwrap();
        global().heartbeat();
        assert!(get(addr, "/healthz").starts_with("HTTP/1.1 200"));
        global().set_ready(false);
        assert!(get(addr, "/readyz").starts_with("HTTP/1.1 503"));
        global().set_ready(true);
        assert!(get(addr, "/readyz").starts_with("HTTP/1.1 200"));
        let metrics = get(addr, "/metrics");
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains("picket_build_info"), "{metrics}");
        assert!(
            metrics.contains("application/openmetrics-text"),
            "{metrics}"
        );
        assert!(get(addr, "/nope").starts_with("HTTP/1.1 404"));
    }

    #[test]
    fn an_output_failing_too_long_makes_the_agent_unready() {
        let metrics = Metrics::new();
        metrics.set_ready(true);
        metrics.set_output_unready_after(Duration::from_secs(60));
        let since = std::time::Instant::now() - Duration::from_secs(61);
        metrics.output_failing(
            "http://127.0.0.1:9/",
            Some((since, "connection refused".into())),
        );
        let response = answer(&metrics, &Method::GET, "/readyz");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        // A recent failure is not yet a reason.
        metrics.output_failing(
            "http://127.0.0.1:9/",
            Some((std::time::Instant::now(), "connection refused".into())),
        );
        assert_eq!(
            answer(&metrics, &Method::GET, "/readyz").status(),
            StatusCode::OK
        );
        assert_eq!(
            metrics.outputs_failing_too_long(),
            Vec::<String>::new(),
            "failing for less than the bound"
        );
        metrics.output_failing(
            "http://127.0.0.1:9/",
            Some((since, "connection refused".into())),
        );
        assert_eq!(
            metrics.outputs_failing_too_long(),
            ["output http://127.0.0.1:9/ failing for 61s: connection refused"]
        );
        metrics.output_failing("http://127.0.0.1:9/", None);
        assert_eq!(
            answer(&metrics, &Method::GET, "/readyz").status(),
            StatusCode::OK
        );
    }

    #[test]
    fn health_needs_a_turning_loop() {
        let metrics = Metrics::new();
        assert_eq!(
            answer(&metrics, &Method::GET, "/healthz").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        metrics.heartbeat();
        assert_eq!(
            answer(&metrics, &Method::GET, "/healthz").status(),
            StatusCode::OK
        );
        assert_eq!(
            answer(&metrics, &Method::POST, "/metrics").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
