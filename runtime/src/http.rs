//! The health and metrics endpoint of `picket run --listen ADDR`:
//!
//! - `GET /healthz`: 200 while the event loop turns, 503 once it has not for
//!   [`STALE_AFTER`] (a liveness probe restarts a stuck agent);
//! - `GET /readyz`: 200 once the probes are attached and the rules loaded, 503 before, while
//!   stopping, and while blind (the hook did not report the canary open, [`crate::canary`]);
//! - `GET /metrics`: [`Metrics`] in the OpenMetrics text format, which Prometheus scrapes.
//!
//! It runs on its own thread with its own small runtime, so it answers even while the event loop
//! is busy, and says so when that loop is stuck instead of getting stuck with it.

use crate::metrics::{Metrics, STALE_AFTER, global};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

/// Longest a client may take over one connection (slow or idle clients are dropped).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

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
        tokio::spawn(async move {
            let connection =
                http1::Builder::new().serve_connection(TokioIo::new(stream), service_fn(respond));
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
        });
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
        (&Method::GET, "/readyz") if metrics.ready() => (StatusCode::OK, TEXT, "ready\n".into()),
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
