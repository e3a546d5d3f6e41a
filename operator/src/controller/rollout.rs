//! Whether a gateway's pods run its current config: the Deployment's rollout, read the way
//! `kubectl rollout status` reads it, as a pure function of the object so that it is tested
//! without a cluster. A TransferGateway is Ready only when this says done; before, Ready meant
//! "compiled and applied" and stood True with 0 of 2 pods ready.

use k8s_openapi::api::apps::v1::Deployment;

/// Where the rollout stands.
#[derive(Debug, PartialEq, Eq)]
pub struct Rollout {
    /// Every wanted pod is updated and ready, and no old pod is left.
    pub done: bool,
    /// The Deployment controller gave up (`ProgressDeadlineExceeded`): it needs a person.
    pub stalled: bool,
    /// A condition reason: `PodsReady`, `RollingOut`, `PodsNotReady`, `ProgressDeadlineExceeded`.
    pub reason: &'static str,
    pub message: String,
    /// Ready pods, for `status.replicas`.
    pub ready: i32,
}

pub fn rollout(wanted: i32, d: Option<&Deployment>) -> Rollout {
    let not_yet = |reason, message: String, ready| Rollout {
        done: false,
        stalled: false,
        reason,
        message,
        ready,
    };
    let Some(d) = d else {
        return not_yet("RollingOut", "the Deployment does not exist yet".into(), 0);
    };
    let st = d.status.clone().unwrap_or_default();
    let ready = st.ready_replicas.unwrap_or(0);
    let generation = d.metadata.generation.unwrap_or(0);
    if st.observed_generation.unwrap_or(0) < generation {
        return not_yet(
            "RollingOut",
            format!("the Deployment controller has not yet seen generation {generation}"),
            ready,
        );
    }
    if let Some(c) = st.conditions.iter().flatten().find(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    }) {
        return Rollout {
            done: false,
            stalled: true,
            reason: "ProgressDeadlineExceeded",
            message: format!(
                "{ready} of {wanted} pods ready; the rollout stopped: {}",
                c.message.as_deref().unwrap_or("progress deadline exceeded")
            ),
            ready,
        };
    }
    let updated = st.updated_replicas.unwrap_or(0);
    let total = st.replicas.unwrap_or(0);
    if updated < wanted {
        return not_yet(
            "RollingOut",
            format!("{updated} of {wanted} pods run the current template"),
            ready,
        );
    }
    if total > updated {
        return not_yet(
            "RollingOut",
            format!("{} old pods are still terminating", total - updated),
            ready,
        );
    }
    if ready < wanted || st.available_replicas.unwrap_or(0) < wanted {
        return not_yet(
            "PodsNotReady",
            format!("{ready} of {wanted} pods ready"),
            ready,
        );
    }
    Rollout {
        done: true,
        stalled: false,
        reason: "PodsReady",
        message: format!("{ready} of {wanted} pods ready"),
        ready,
    }
}

/// The rollout of a gateway's Deployments (`wanted`: name and replicas), read together: done
/// when every one is done, stalled when one is.
pub fn rollout_all(wanted: &[(String, i32)], live: &[Deployment]) -> Rollout {
    let parts: Vec<(&str, Rollout)> = wanted
        .iter()
        .map(|(name, n)| {
            let d = live
                .iter()
                .find(|d| d.metadata.name.as_deref() == Some(name));
            (name.as_str(), rollout(*n, d))
        })
        .collect();
    let ready = parts.iter().map(|(_, r)| r.ready).sum();
    let total: i32 = wanted.iter().map(|(_, n)| n).sum();
    let several = parts.len() > 1;
    let first = parts
        .iter()
        .find(|(_, r)| r.stalled)
        .or_else(|| parts.iter().find(|(_, r)| !r.done));
    match first {
        Some((name, r)) => Rollout {
            done: false,
            stalled: r.stalled,
            reason: r.reason,
            message: if several && r.reason == "PodsNotReady" {
                format!("{ready} of {total} pods ready")
            } else if several {
                format!(
                    "{ready} of {total} pods ready; Deployment {name}: {}",
                    r.message
                )
            } else {
                r.message.clone()
            },
            ready,
        },
        None => Rollout {
            done: true,
            stalled: false,
            reason: "PodsReady",
            message: format!("{ready} of {total} pods ready"),
            ready,
        },
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};

    use super::*;

    fn deployment(generation: i64, status: DeploymentStatus) -> Deployment {
        let mut d = Deployment::default();
        d.metadata.generation = Some(generation);
        d.status = Some(status);
        d
    }

    fn status(observed: i64, total: i32, updated: i32, ready: i32) -> DeploymentStatus {
        DeploymentStatus {
            observed_generation: Some(observed),
            replicas: Some(total),
            updated_replicas: Some(updated),
            ready_replicas: Some(ready),
            available_replicas: Some(ready),
            ..Default::default()
        }
    }

    #[test]
    fn ready_only_when_every_wanted_pod_is_updated_and_ready() {
        let r = rollout(2, Some(&deployment(3, status(3, 2, 2, 2))));
        assert!(r.done && !r.stalled, "{r:?}");
        assert_eq!(r.message, "2 of 2 pods ready");
        // The defect: Ready with 0 of 2 pods ready.
        let r = rollout(2, Some(&deployment(3, status(3, 2, 2, 0))));
        assert_eq!((r.done, r.reason), (false, "PodsNotReady"));
        assert_eq!(r.message, "0 of 2 pods ready");
        let r = rollout(2, Some(&deployment(3, status(3, 2, 2, 1))));
        assert_eq!((r.done, r.reason), (false, "PodsNotReady"));
    }

    #[test]
    fn a_rollout_in_progress_is_not_ready() {
        assert_eq!(rollout(2, None).reason, "RollingOut");
        // The Deployment controller has not seen the new template yet (its old pods are ready).
        let r = rollout(2, Some(&deployment(4, status(3, 2, 2, 2))));
        assert_eq!((r.done, r.reason), (false, "RollingOut"));
        // New pods not all created, or old ones still there.
        assert!(!rollout(2, Some(&deployment(4, status(4, 3, 1, 2)))).done);
        let r = rollout(2, Some(&deployment(4, status(4, 3, 2, 2))));
        assert_eq!(r.message, "1 old pods are still terminating");
        // Scaling up: the new pod is not ready yet.
        assert!(!rollout(3, Some(&deployment(5, status(5, 3, 3, 2)))).done);
    }

    #[test]
    fn a_rollout_past_its_deadline_is_stalled() {
        let mut s = status(2, 2, 1, 1);
        s.conditions = Some(vec![DeploymentCondition {
            type_: "Progressing".into(),
            status: "False".into(),
            reason: Some("ProgressDeadlineExceeded".into()),
            message: Some("ReplicaSet \"dmz-7f\" has timed out progressing.".into()),
            ..Default::default()
        }]);
        let r = rollout(2, Some(&deployment(2, s)));
        assert!(r.stalled && !r.done);
        assert!(r.message.contains("timed out progressing"), "{}", r.message);
    }

    #[test]
    fn several_deployments_are_done_together_and_stalled_by_one() {
        let named = |name: &str, d: Deployment| {
            let mut d = d;
            d.metadata.name = Some(name.into());
            d
        };
        let wanted = [("gw-r0".to_owned(), 1), ("gw-r1".to_owned(), 1)];
        let ready = named("gw-r0", deployment(1, status(1, 1, 1, 1)));
        // One is missing: not done, and the message names it.
        let r = rollout_all(&wanted, std::slice::from_ref(&ready));
        assert_eq!((r.done, r.stalled, r.ready), (false, false, 1));
        assert_eq!(
            r.message,
            "1 of 2 pods ready; Deployment gw-r1: the Deployment does not exist yet"
        );
        let both = [
            ready.clone(),
            named("gw-r1", deployment(1, status(1, 1, 1, 1))),
        ];
        let r = rollout_all(&wanted, &both);
        assert_eq!((r.done, r.reason, r.ready), (true, "PodsReady", 2));
        assert_eq!(r.message, "2 of 2 pods ready");
        // A Deployment of an earlier shape does not count.
        let stale = named("gw", deployment(1, status(1, 2, 2, 2)));
        let r = rollout_all(&wanted, &[both[0].clone(), both[1].clone(), stale]);
        assert_eq!((r.done, r.ready), (true, 2));
        // One stalled: the whole is stalled.
        let mut s = status(2, 1, 0, 0);
        s.conditions = Some(vec![DeploymentCondition {
            type_: "Progressing".into(),
            status: "False".into(),
            reason: Some("ProgressDeadlineExceeded".into()),
            ..Default::default()
        }]);
        let r = rollout_all(&wanted, &[ready, named("gw-r1", deployment(2, s))]);
        assert!(r.stalled && !r.done);
        // One Deployment: its own message, as before.
        let one = [("gw".to_owned(), 2)];
        let r = rollout_all(&one, &[named("gw", deployment(3, status(3, 2, 2, 1)))]);
        assert_eq!(r.message, "1 of 2 pods ready");
    }
}
