//! The operator's `/metrics` and `/healthz`: reconciles, errors by category, durations, writes,
//! and every request it makes to the API server.

use std::{net::SocketAddr, sync::Arc};

use http_body_util::Full;
use hyper::{Method, Request, Response, Uri, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::net::TcpListener;

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    /// Reconciles, by controller.
    pub reconciles: Family<Labels, Counter>,
    /// Failed reconciles and invalid objects, by controller and category.
    pub errors: Family<Labels, Counter>,
    /// Reconcile duration, by controller.
    pub duration: Family<Labels, Histogram>,
    /// Object writes (server-side applies), by kind.
    pub writes: Family<Labels, Counter>,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
    /// Requests to the API server, by verb and resource (as the API server's own
    /// `apiserver_request_total` names them).
    pub api_requests: Family<Labels, Counter>,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("portcullis_operator");
        let m = Metrics {
            reconciles: Family::default(),
            errors: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])
            }),
            writes: Family::default(),
            leader: Gauge::default(),
            api_requests: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "reconciles",
            "Reconciles, by controller",
            m.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconcile failures and invalid objects, by controller and category",
            m.errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration, by controller",
            m.duration.clone(),
        );
        registry.register(
            "writes",
            "Objects written (server-side apply), by kind",
            m.writes.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            m.leader.clone(),
        );
        registry.register(
            "api_requests",
            "Requests to the Kubernetes API server, by verb and resource",
            m.api_requests.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Counts one request to the API server.
    pub fn count_request<B>(&self, req: &Request<B>) {
        let apply = req
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"application/apply-patch"));
        let (verb, resource) = api_request(req.method(), req.uri(), apply);
        self.api_requests
            .get_or_create(&vec![("verb", verb.to_owned()), ("resource", resource)])
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("encoding to a String cannot fail");
        out
    }
}

/// The verb and resource of a request to the API server, as its `apiserver_request_total`
/// names them: `GET` of a collection is `LIST`, or `WATCH` with `watch=true`; a subresource is
/// `resource/sub`.
fn api_request(method: &Method, uri: &Uri, apply: bool) -> (&'static str, String) {
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    // /api/v1/... or /apis/GROUP/VERSION/...
    let rest = match segments.first() {
        Some(&"api") => segments.get(2..),
        Some(&"apis") => segments.get(3..),
        _ => None,
    }
    .unwrap_or_default();
    let rest = match rest {
        ["namespaces", _, inner @ ..] if !inner.is_empty() => inner,
        other => other,
    };
    let resource = match rest {
        [] => String::new(),
        [r] | [r, _] => (*r).to_owned(),
        [r, _, sub, ..] => format!("{r}/{sub}"),
    };
    let named = rest.len() >= 2;
    let watch = uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let verb = match *method {
        Method::GET if named => "GET",
        Method::GET if watch => "WATCH",
        Method::GET => "LIST",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH if apply => "APPLY",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    };
    (verb, resource)
}

/// Serves `/metrics` and `/healthz` until the task is dropped.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics and health on http://{addr}/metrics");
    loop {
        let (tcp, _) = listener.accept().await?;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let (status, body) = match req.uri().path() {
                        "/metrics" => (200, metrics.encode()),
                        "/healthz" => (200, "ok\n".to_owned()),
                        _ => (404, "not found\n".to_owned()),
                    };
                    Ok::<_, std::convert::Infallible>(
                        Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::from(body)))
                            .expect("a valid response"),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_requests_are_named_as_the_api_server_names_them() {
        for (method, uri, apply, want) in [
            (
                Method::GET,
                "/api/v1/namespaces/ns/secrets/creds",
                false,
                ("GET", "secrets"),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/ns/secrets?labelSelector=a%3Db",
                false,
                ("LIST", "secrets"),
            ),
            (
                Method::GET,
                "/api/v1/secrets?watch=true&resourceVersion=5",
                false,
                ("WATCH", "secrets"),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/ns",
                false,
                ("GET", "namespaces"),
            ),
            (
                Method::GET,
                "/apis/portcullis.dev/v1alpha1/transferusers?limit=500",
                false,
                ("LIST", "transferusers"),
            ),
            (
                Method::PATCH,
                "/apis/portcullis.dev/v1alpha1/namespaces/ns/transferusers/u/status",
                false,
                ("PATCH", "transferusers/status"),
            ),
            (
                Method::PATCH,
                "/apis/apps/v1/namespaces/ns/deployments/gw?fieldManager=x",
                true,
                ("APPLY", "deployments"),
            ),
            (
                Method::PUT,
                "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/op",
                false,
                ("PUT", "leases"),
            ),
            (
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/ns/events",
                false,
                ("POST", "events"),
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/ns/pods/p",
                false,
                ("DELETE", "pods"),
            ),
            (Method::GET, "/version", false, ("LIST", "")),
        ] {
            let uri: Uri = uri.parse().unwrap();
            let (verb, resource) = api_request(&method, &uri, apply);
            assert_eq!((verb, resource.as_str()), want, "{method} {uri}");
        }
    }
}
