//! The admin port: `/healthz` (the process runs), `/readyz` (listeners are up, the gateway is
//! not draining, and its audit trail can be made durable), `/metrics` (Prometheus text format), `/defender/bans` (the bans in force
//! here, JSON) and `/config` (the hash of the config in force and of one refused, JSON: what the
//! operator reads to confirm that a pod serves the config it wrote).

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::state::Shared;

/// `{"configHash": …, "refused": {"configHash": …, "errors": […]} | null}`: hashes only, no
/// secret (see `portcullis_config::material_hash`).
fn served_config(shared: &Shared) -> serde_json::Value {
    let refused = shared.refused.lock().expect("not poisoned").clone();
    serde_json::json!({
        "configHash": shared.runtime.load().hash,
        "refused": refused,
    })
}

pub async fn serve(shared: Arc<Shared>, tcp: TcpListener, ready: Arc<AtomicBool>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let stream = tokio::select! {
            a = tcp.accept() => match a { Ok((s, _)) => s, Err(_) => continue },
            _ = shutdown.changed() => {
                // Keep answering (readyz now says no) until the process exits.
                ready.store(false, Ordering::SeqCst);
                match tcp.accept().await { Ok((s, _)) => s, Err(_) => continue }
            }
        };
        let (shared, ready) = (shared.clone(), ready.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (shared, ready) = (shared.clone(), ready.clone());
                async move { Ok::<_, Infallible>(route(&shared, &ready, req.uri().path())) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn route(shared: &Shared, ready: &AtomicBool, path: &str) -> Response<Full<Bytes>> {
    let (status, body, ctype) = match path {
        "/healthz" => (StatusCode::OK, "ok\n".to_owned(), "text/plain"),
        // While new logins are refused for want of an audit trail, the pod is taken out of
        // its Service: clients go to a replica that can serve them.
        "/readyz" if let Some(why) = shared.audit.refusal() => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
            "text/plain",
        ),
        "/readyz" if ready.load(Ordering::SeqCst) && !shared.shutting_down() => {
            (StatusCode::OK, "ready\n".to_owned(), "text/plain")
        }
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready\n".to_owned(),
            "text/plain",
        ),
        "/metrics" => (
            StatusCode::OK,
            shared.metrics.encode(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        "/config" => (
            StatusCode::OK,
            served_config(shared).to_string() + "\n",
            "application/json",
        ),
        "/defender/bans" => (
            StatusCode::OK,
            serde_json::to_string_pretty(&shared.defender.active()).expect("bans serialize") + "\n",
            "application/json",
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "not found\n".to_owned(),
            "text/plain",
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}
