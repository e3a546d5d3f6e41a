//! Whether the gateway's pods serve the config the operator wrote. A pod that is Ready runs *a*
//! config; the Secret volume reaches it only when the kubelet next syncs (up to a minute or so),
//! and the gateway may refuse what arrives. So the operator asks each ready pod's admin port
//! (`/config`) which config it serves, and the TransferGateway is Ready only when every one
//! answers with the hash in `status.configHash`. Both sides compute that hash with
//! [`portcullis_config::material_hash`].

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::{Request, body::Bytes};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt, api::ListParams};
use portcullis_api::TransferGateway;
use serde::Deserialize;

use super::build;
use crate::shared::{Context, Error, Step};

/// How long one pod's admin port may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

/// What a gateway's `/config` says.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodConfig {
    pub config_hash: String,
    #[serde(default)]
    pub refused: Option<Refused>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Refused {
    pub config_hash: String,
    pub errors: Vec<String>,
}

/// A pod's answer, or why there is none.
pub type Report = (String, Result<PodConfig, String>);

/// Where the pods stand against the wanted config.
#[derive(Debug, PartialEq, Eq)]
pub struct Served {
    /// Every ready pod serves the wanted config.
    pub done: bool,
    /// A pod refused the wanted config: it needs a person.
    pub stalled: bool,
    /// `ConfigServed`, `ConfigRefused`, `ConfigNotServed` or `ConfigNotConfirmed`.
    pub reason: &'static str,
    pub message: String,
}

/// Judges the ready pods' reports against the wanted hash. Pure, so it is tested without pods.
pub fn judge(wanted: &str, reports: &[Report]) -> Served {
    let short = |h: &str| h.chars().take(12).collect::<String>();
    let mut refused = Vec::new();
    let mut behind = Vec::new();
    let mut unknown = Vec::new();
    for (pod, report) in reports {
        match report {
            Ok(c) if c.config_hash == wanted => {}
            Ok(PodConfig {
                refused: Some(r), ..
            }) if r.config_hash == wanted => {
                refused.push(format!("pod {pod} refused it: {}", r.errors.join("; ")))
            }
            Ok(c) => behind.push(format!("pod {pod} serves {}", short(&c.config_hash))),
            Err(e) => unknown.push(format!("pod {pod}: {e}")),
        }
    }
    let not = |stalled, reason, what: &str, list: Vec<String>| Served {
        done: false,
        stalled,
        reason,
        message: format!("config {} {what}: {}", short(wanted), list.join("; ")),
    };
    if !refused.is_empty() {
        return not(true, "ConfigRefused", "was refused", refused);
    }
    if !behind.is_empty() {
        // The kubelet has not synced the Secret volume yet, or the pod has not reloaded.
        return not(false, "ConfigNotServed", "is not served yet", behind);
    }
    if !unknown.is_empty() {
        return not(false, "ConfigNotConfirmed", "is not confirmed", unknown);
    }
    Served {
        done: true,
        stalled: false,
        reason: "ConfigServed",
        message: format!(
            "{} of {} ready pods serve config {}",
            reports.len(),
            reports.len(),
            short(wanted)
        ),
    }
}

/// Asks every ready, not terminating pod of `gw` which config it serves.
pub async fn ask(ctx: &Context, gw: &TransferGateway, ns: &str) -> Result<Vec<Report>, Error> {
    let selector = build::selector(gw)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube(Step::Rollout))?;
    let ready = list.items.into_iter().filter(|p| {
        p.metadata.deletion_timestamp.is_none()
            && p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    });
    let port = gw.spec.admin_port;
    let asks = ready.map(|p| async move {
        let name = p.name_any();
        let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone());
        let answer = match ip {
            None => Err("no pod IP".to_owned()),
            Some(ip) => tokio::time::timeout(ASK_TIMEOUT, get_config(&ip, port))
                .await
                .unwrap_or_else(|_| Err(format!("admin port did not answer in {ASK_TIMEOUT:?}"))),
        };
        (name, answer)
    });
    Ok(futures::future::join_all(asks).await)
}

/// `GET http://IP:PORT/config` over one HTTP/1.1 connection.
async fn get_config(ip: &str, port: i32) -> Result<PodConfig, String> {
    let host = if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    };
    let tcp = tokio::net::TcpStream::connect(&host)
        .await
        .map_err(|e| format!("admin port {host}: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("admin port {host}: {e}"))?;
    tokio::spawn(conn);
    let req = Request::get("/config")
        .header("host", &host)
        .body(Empty::<Bytes>::new())
        .expect("a static request is valid");
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("admin port {host}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!(
            "admin port {host}: /config answered {}",
            resp.status()
        ));
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("admin port {host}: {e}"))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("admin port {host}: /config: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serving(hash: &str) -> Result<PodConfig, String> {
        Ok(PodConfig {
            config_hash: hash.into(),
            refused: None,
        })
    }

    #[test]
    fn served_only_when_every_ready_pod_serves_the_wanted_hash() {
        let want = "aaaaaaaaaaaaaaaa";
        let r = judge(
            want,
            &[("a".into(), serving(want)), ("b".into(), serving(want))],
        );
        assert!(r.done && !r.stalled, "{r:?}");
        assert_eq!(r.message, "2 of 2 ready pods serve config aaaaaaaaaaaa");
        // One pod still has the old Secret volume.
        let r = judge(
            want,
            &[("a".into(), serving(want)), ("b".into(), serving("bbbb"))],
        );
        assert_eq!(
            (r.done, r.stalled, r.reason),
            (false, false, "ConfigNotServed")
        );
        assert_eq!(
            r.message,
            "config aaaaaaaaaaaa is not served yet: pod b serves bbbb"
        );
        // An admin port that does not answer is not taken as a yes.
        let r = judge(want, &[("a".into(), Err("connection refused".into()))]);
        assert_eq!((r.done, r.reason), (false, "ConfigNotConfirmed"));
        assert!(
            r.message.contains("pod a: connection refused"),
            "{}",
            r.message
        );
    }

    #[test]
    fn a_pod_that_refused_the_wanted_config_stalls() {
        let want = "aaaa";
        let refused = Ok(PodConfig {
            config_hash: "old".into(),
            refused: Some(Refused {
                config_hash: want.into(),
                errors: vec!["keyRings[0]: certificate expired".into()],
            }),
        });
        let r = judge(want, &[("a".into(), serving(want)), ("b".into(), refused)]);
        assert_eq!(
            (r.done, r.stalled, r.reason),
            (false, true, "ConfigRefused")
        );
        assert_eq!(
            r.message,
            "config aaaa was refused: pod b refused it: keyRings[0]: certificate expired"
        );
        // A refusal of some other config is not this one's: the pod is merely behind.
        let other = Ok(PodConfig {
            config_hash: "old".into(),
            refused: Some(Refused {
                config_hash: "zzz".into(),
                errors: vec![],
            }),
        });
        assert_eq!(
            judge(want, &[("a".into(), other)]).reason,
            "ConfigNotServed"
        );
    }
}
