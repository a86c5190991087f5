//! `/` (a status page), `/health`, `/metrics` and `/status` over plain
//! HTTP/1.1. Meant for a
//! loopback or private address that a load balancer or Prometheus scrapes;
//! nothing served reveals data or secrets.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::Mutex as AsyncMutex;

use super::page;
use super::state::{self, Shared};
use crate::storage::Store;

/// A repository probe answers for this long, so a tight health-check loop
/// does not turn into a request per check.
const PROBE_CACHE: Duration = Duration::from_secs(5);
/// Longer than this and the repository counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Server {
    pub state: Shared,
    pub store: Arc<dyn Store>,
    probe: AsyncMutex<Option<(Instant, Result<(), String>)>>,
}

impl Server {
    pub fn new(state: Shared, store: Arc<dyn Store>) -> Server {
        Server {
            state,
            store,
            probe: AsyncMutex::new(None),
        }
    }

    async fn probe(&self) -> Result<(), String> {
        let mut cached = self.probe.lock().await;
        if let Some((at, result)) = cached.as_ref()
            && at.elapsed() < PROBE_CACHE
        {
            return result.clone();
        }
        let result = match tokio::time::timeout(
            PROBE_TIMEOUT,
            self.store.head(crate::repo::MARKER_KEY, None),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("cannot read {}: {e}", self.store.location())),
            Err(_) => Err(format!(
                "{} did not answer within {} s",
                self.store.location(),
                PROBE_TIMEOUT.as_secs()
            )),
        };
        *cached = Some((Instant::now(), result.clone()));
        state::lock(&self.state).repository_up = Some(result.is_ok());
        result
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        }
        let now = chrono::Utc::now();
        match req.uri().path() {
            "/health" | "/healthz" => {
                let repo = self.probe().await;
                let state = state::lock(&self.state);
                let checks = state::health(&state, repo, now);
                let healthy = checks.values().all(|c| c.ok) && !state.stopping;
                let failing: Vec<&String> = checks
                    .iter()
                    .filter(|(_, c)| !c.ok)
                    .map(|(k, _)| k)
                    .collect();
                let body = serde_json::json!({
                    "status": if healthy { "healthy" } else { "unhealthy" },
                    "failing": failing,
                    "checks": checks,
                });
                json(
                    if healthy {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    },
                    &body,
                )
            }
            "/metrics" => {
                // drctl_repository_up is as fresh as /health's check.
                let _ = self.probe().await;
                let body = state::metrics(&state::lock(&self.state), now);
                Response::builder()
                    .status(StatusCode::OK)
                    .header(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                    .body(Full::new(Bytes::from(body)))
                    .expect("valid response")
            }
            "/status" => {
                let state = state::lock(&self.state);
                json(StatusCode::OK, &*state)
            }
            "/" | "/index.html" => {
                let repo = self.probe().await;
                let state = state::lock(&self.state);
                let checks = state::health(&state, repo, now);
                Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "text/html; charset=utf-8")
                    .header("content-security-policy", page::CONTENT_SECURITY_POLICY)
                    .header("x-content-type-options", "nosniff")
                    .header("cache-control", "no-store")
                    .body(Full::new(Bytes::from(page::render(&state, &checks, now))))
                    .expect("valid response")
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /, /health, /metrics or /status\n",
            ),
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("valid response")
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(value).expect("state serialises");
    body.push(b'\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

/// Serves until the task is aborted.
pub async fn serve(listener: TcpListener, server: Arc<Server>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(event = "http_accept_failed", error = %e, "accept failed on the health/metrics listener");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let server = server.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(server.handle(req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            // Clients hanging up early is routine for probes.
            let _ = conn.await;
        });
    }
}
