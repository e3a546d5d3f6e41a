//! Step 5 helpers: conditions in the standard `metav1.Condition` shape, kept stable so an
//! unchanged world writes no status.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use portcullis_api::{AuditKey, READY};
use serde::Serialize;
use serde_json::Value;

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

/// The JSON merge patch that takes a status from `old` to `new`. Fields `new` leaves out are
/// set to `null`, which removes them: a merge patch of `new` alone would keep them.
pub fn merge_patch<T: Serialize>(old: &T, new: &T) -> Result<Value, super::Error> {
    let to_value =
        |v: &T| serde_json::to_value(v).map_err(super::Error::serialize(super::Step::Status));
    let mut patch = to_value(new)?;
    if let (Value::Object(old), Value::Object(patch)) = (to_value(old)?, &mut patch) {
        for key in old.keys() {
            patch.entry(key.clone()).or_insert(Value::Null);
        }
    }
    Ok(patch)
}

/// A gateway's `status.auditKeys`: the key it signs with now (if any), then the keys it signed
/// with before, newest first, at most ten. A key the last status listed as current and the
/// new bundle does not hold is retired at `now`.
pub fn audit_keys(old: &[AuditKey], current: Option<&AuditKey>, now: &str) -> Vec<AuditKey> {
    let retired = old
        .iter()
        .filter(|k| current.is_none_or(|c| c.key_id != k.key_id))
        .map(|k| AuditKey {
            retired_at: Some(k.retired_at.clone().unwrap_or_else(|| now.to_owned())),
            ..k.clone()
        })
        .take(10);
    current.cloned().into_iter().chain(retired).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merge_patch_removes_what_the_new_status_leaves_out() {
        let old = portcullis_api::TransferGatewayStatus {
            served_config_hash: Some("h".into()),
            config_hash: Some("h".into()),
            ..Default::default()
        };
        let new = portcullis_api::TransferGatewayStatus {
            config_hash: Some("i".into()),
            ..Default::default()
        };
        assert_eq!(
            merge_patch(&old, &new).unwrap(),
            serde_json::json!({"configHash": "i", "servedConfigHash": null})
        );
    }

    #[test]
    fn a_gateway_lists_its_current_audit_key_first_and_ten_it_replaced() {
        let key = |id: &str| AuditKey {
            key_id: id.into(),
            public_key: format!("PEM {id}"),
            created_at: "2026-01-01T00:00:00Z".into(),
            retired_at: None,
        };
        let mut keys = audit_keys(&[], Some(&key("k0")), "t0");
        assert_eq!(keys, [key("k0")]);
        // The same key again changes nothing.
        assert_eq!(audit_keys(&keys, Some(&key("k0")), "t1"), keys);
        for i in 1..=12 {
            keys = audit_keys(&keys, Some(&key(&format!("k{i}"))), &format!("t{i}"));
        }
        let listed: Vec<(&str, Option<&str>)> = keys
            .iter()
            .map(|k| (k.key_id.as_str(), k.retired_at.as_deref()))
            .collect();
        assert_eq!(listed[0], ("k12", None));
        assert_eq!(listed[1], ("k11", Some("t12")));
        assert_eq!(listed[10], ("k2", Some("t3")));
        assert_eq!(listed.len(), 11);
        // Signing turned off: the last key is retired too.
        let off = audit_keys(&keys, None, "t13");
        assert_eq!(off[0].key_id, "k12");
        assert_eq!(off[0].retired_at.as_deref(), Some("t13"));
    }

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
