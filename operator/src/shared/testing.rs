//! For the drivers' tests: a reconcile context over caches that hold given objects, and a mock
//! API server (tower-test, as kube-rs's controller-rs does) that records every request the
//! reconcile makes and answers it.

use std::sync::{Arc, Mutex};

use hyper::{Request, Response};
use kube::{
    Client,
    client::Body,
    runtime::events::{Recorder, Reporter},
};
use serde_json::{Value, json};

use super::{Context, cache::Caches};
use crate::metrics::Metrics;

/// One request the reconcile made.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
}

impl Seen {
    /// `PATCH /api/v1/namespaces/ns/secrets/x`, the form the tests compare.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// What the mock API server has been asked, in order.
pub type Log = Arc<Mutex<Vec<Seen>>>;

/// A client whose requests `answer` serves (status and body); every request is logged.
pub fn mock_client(answer: impl Fn(&Seen) -> (u16, Value) + Send + 'static) -> (Client, Log) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let log: Log = Arc::default();
    let seen = log.clone();
    tokio::spawn(async move {
        while let Some((req, respond)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let s = Seen {
                method: parts.method.to_string(),
                path: parts.uri.path().to_owned(),
                query: parts.uri.query().unwrap_or("").to_owned(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let (status, out) = answer(&s);
            seen.lock().unwrap().push(s);
            respond.send_response(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&out).unwrap()))
                    .unwrap(),
            );
        }
    });
    (Client::new(service, "default"), log)
}

/// The usual answers: a server-side apply gets its object back, an Event is created, and a
/// GET finds nothing. A status patch is answered by `status`, with the object it patched.
pub fn answer(seen: &Seen, status: impl Fn(&Seen) -> Value) -> (u16, Value) {
    match seen.method.as_str() {
        "PATCH" if seen.path.ends_with("/status") => (200, status(seen)),
        "PATCH" | "POST" => (200, seen.body.clone()),
        _ => (
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "reason": "NotFound", "code": 404, "message": "not found"}),
        ),
    }
}

/// [`answer`], a status patch being answered with `obj` and the status it was given.
pub fn answering_status<K: serde::Serialize>(
    obj: &K,
) -> impl Fn(&Seen) -> (u16, Value) + Send + 'static + use<K> {
    let base = serde_json::to_value(obj).unwrap();
    move |s| {
        answer(s, |s| {
            let mut out = base.clone();
            out["status"] = s.body["status"].clone();
            out
        })
    }
}

/// A reconcile context over `caches` and `client`.
pub fn context(client: Client, caches: Arc<Caches>) -> Arc<Context> {
    Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "portcullis-operator".into(),
                instance: Some("test".into()),
            },
        ),
        client,
        caches,
        allowed_images: Vec::new(),
        admin_namespaces: vec!["portcullis-system".into()],
        metrics: Arc::new(Metrics::default()),
    })
}
