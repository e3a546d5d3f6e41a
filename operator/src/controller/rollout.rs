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
}
