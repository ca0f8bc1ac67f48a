//! HTTP(S) outputs: a keep-alive client (hyper, TLS through rustls with the ring provider and
//! the system's trust store), and the webhook output that POSTs signals as JSON.

use super::{Destination, Failure, Sending};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::Duration;

/// How HTTP outputs send.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// Headers sent with every request (`--output-header`, `--output-header-file`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Longest one request may take, connection included (`--output-timeout`).
    pub timeout: Duration,
    /// Most signals in one webhook request (`--output-batch`).
    pub batch: usize,
}

impl Default for HttpSettings {
    fn default() -> HttpSettings {
        HttpSettings {
            headers: Vec::new(),
            timeout: Duration::from_secs(10),
            batch: 100,
        }
    }
}

/// Most bytes of a response body read (the rest is not needed: it is only quoted in errors).
const MAX_RESPONSE: usize = 64 << 10;

/// A client for one URL.
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: Uri,
    headers: Arc<Vec<(HeaderName, HeaderValue)>>,
    timeout: Duration,
}

impl HttpClient {
    /// A client for `uri`. For `https`, the system's trust store is loaded now, so that a node
    /// without one fails the start instead of every delivery.
    pub fn new(uri: Uri, settings: &HttpSettings) -> Result<HttpClient, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = if uri.scheme_str() == Some("https") {
            builder
                .with_provider_and_native_roots(provider)
                .map_err(|err| format!("{uri}: loading the system's trust store: {err}"))?
        } else {
            // Plain HTTP: TLS is never used, an empty trust store will do.
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|err| err.to_string())?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            builder.with_tls_config(config)
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(settings.timeout));
        http.set_nodelay(true);
        let connector = builder.https_or_http().enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(2)
            .build(connector);
        Ok(HttpClient {
            client,
            uri,
            headers: Arc::new(settings.headers.clone()),
            timeout: settings.timeout,
        })
    }

    /// POSTs `body`; `Ok` on a 2xx answer. A refusal that sending again cannot change (a 4xx
    /// other than 401, 403, 404, 408 and 429) is [`Failure::Rejected`]; everything else (no
    /// connection, a timeout, a 5xx, an authentication to be fixed) is [`Failure::Retry`].
    pub async fn post(&self, content_type: &'static str, body: Bytes) -> Result<(), Failure> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(CONTENT_TYPE, content_type)
            .header(
                USER_AGENT,
                concat!("picket/", env!("CARGO_PKG_VERSION")).to_string(),
            )
            .body(Full::new(body))
            .map_err(|err| Failure::Fatal(err.to_string()))?;
        for (name, value) in self.headers.iter() {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        let exchange = async {
            let response = self.client.request(request).await.map_err(|err| {
                use std::error::Error;
                // The cause says what happened (connection refused, reset...).
                let mut text = err.to_string();
                let mut source = err.source();
                while let Some(cause) = source {
                    text = format!("{text}: {cause}");
                    source = cause.source();
                }
                text
            })?;
            let status = response.status();
            // Read to the end, so that the connection can be used again.
            let body = Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, String>((status, body))
        };
        let (status, body) = match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => {
                return Err(Failure::Retry(format!(
                    "no answer within {:?}",
                    self.timeout
                )));
            }
            Ok(Err(err)) => return Err(Failure::Retry(err)),
            Ok(Ok(answer)) => answer,
        };
        if status.is_success() {
            return Ok(());
        }
        let text =
            crate::text::escape_controls(&String::from_utf8_lossy(&body[..body.len().min(200)]));
        let error = format!("answered {status}: {text}");
        let retry = !status.is_client_error()
            || matches!(
                status,
                StatusCode::UNAUTHORIZED
                    | StatusCode::FORBIDDEN
                    | StatusCode::NOT_FOUND
                    | StatusCode::REQUEST_TIMEOUT
                    | StatusCode::TOO_MANY_REQUESTS
            );
        Err(if retry {
            Failure::Retry(error)
        } else {
            Failure::Rejected(error)
        })
    }
}

/// `http(s)://URL`: each request carries up to `--output-batch` signals, one JSON object a line
/// (`application/x-ndjson`); with `--output-batch 1`, one JSON object (`application/json`).
pub struct Webhook {
    client: HttpClient,
    batch: usize,
}

impl Webhook {
    /// A webhook output POSTing to `uri`.
    pub fn new(uri: Uri, settings: &HttpSettings) -> Result<Webhook, String> {
        Ok(Webhook {
            client: HttpClient::new(uri, settings)?,
            batch: settings.batch.max(1),
        })
    }
}

impl Destination for Webhook {
    fn max_batch(&self) -> usize {
        self.batch
    }

    fn deliver<'a>(&'a mut self, batch: &'a [Bytes]) -> Sending<'a> {
        let content_type = if self.batch == 1 {
            "application/json"
        } else {
            "application/x-ndjson"
        };
        let mut body = Vec::with_capacity(batch.iter().map(|l| l.len() + 1).sum());
        for line in batch {
            body.extend_from_slice(line);
            body.push(b'\n');
        }
        Box::pin(self.client.post(content_type, body.into()))
    }
}
