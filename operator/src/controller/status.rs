//! Step 5 helpers: conditions in the standard `metav1.Condition` shape, kept stable so an
//! unchanged world writes no status.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use portcullis_api::READY;

/// A condition to set: type, status, reason, message.
pub struct Want<'a> {
    pub type_: &'a str,
    pub status: bool,
    pub reason: &'a str,
    pub message: String,
}

impl<'a> Want<'a> {
    /// A kstatus flag (`Reconciling`, `Stalled`): set, it carries the reason and message; unset,
    /// only the `unset` reason.
    pub fn flag(
        type_: &'a str,
        set: bool,
        reason: &'a str,
        message: &str,
        unset: &'a str,
    ) -> Want<'a> {
        Want {
            type_,
            status: set,
            reason: if set { reason } else { unset },
            message: if set {
                message.to_owned()
            } else {
                String::new()
            },
        }
    }
}

/// The new condition list: each wanted condition replaces its type, keeping
/// `lastTransitionTime` when the status did not change, so re-reconciling writes nothing.
pub fn merge(old: &[Condition], wants: Vec<Want<'_>>, generation: Option<i64>) -> Vec<Condition> {
    let mut out: Vec<Condition> = old.to_vec();
    for w in wants {
        let status = if w.status { "True" } else { "False" }.to_owned();
        let prev = out.iter().position(|c| c.type_ == w.type_);
        let last_transition_time = match prev.map(|i| &out[i]) {
            Some(c) if c.status == status => c.last_transition_time.clone(),
            _ => Time(Timestamp::now()),
        };
        let c = Condition {
            type_: w.type_.to_owned(),
            status,
            reason: w.reason.to_owned(),
            message: w.message,
            observed_generation: generation,
            last_transition_time,
        };
        match prev {
            Some(i) => out[i] = c,
            None => out.push(c),
        }
    }
    out
}

pub fn is_ready(conditions: Option<&[Condition]>) -> bool {
    conditions
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == READY && c.status == "True")
}

pub fn ready_message(conditions: Option<&[Condition]>) -> Option<String> {
    conditions
        .unwrap_or_default()
        .iter()
        .find(|c| c.type_ == READY)
        .map(|c| c.message.clone())
}

/// Whether the Ready condition changed status or reason (worth an Event).
pub fn ready_changed(old: &[Condition], new: &[Condition]) -> bool {
    let find = |cs: &[Condition]| {
        cs.iter()
            .find(|c| c.type_ == READY)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    find(old) != find(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_status_keeps_the_transition_time() {
        let first = merge(
            &[],
            vec![Want {
                type_: READY,
                status: false,
                reason: "X",
                message: "m".into(),
            }],
            Some(1),
        );
        let again = merge(
            &first,
            vec![Want {
                type_: READY,
                status: false,
                reason: "X",
                message: "m".into(),
            }],
            Some(1),
        );
        assert_eq!(first, again);
        assert!(!ready_changed(&first, &again));
        let flipped = merge(
            &again,
            vec![Want {
                type_: READY,
                status: true,
                reason: "Ok",
                message: "".into(),
            }],
            Some(2),
        );
        assert!(ready_changed(&again, &flipped));
        assert_eq!(flipped.len(), 1);
    }
}
