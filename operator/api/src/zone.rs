//! `NetworkZone`: a named set of networks that listeners and users admit.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::CommonStatus;

/// A named set of CIDRs. Listeners admit zones (anyone else is closed before the banner, and
/// the NetworkPolicy and `loadBalancerSourceRanges` follow them); users may be confined to zones.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "NetworkZone",
    namespaced,
    status = "CommonStatus",
    shortname = "nz",
    category = "portcullis",
    doc = "A named set of networks (CIDRs) that gateway listeners and users admit.",
    printcolumn(name = "CIDRs", type_ = "string", json_path = ".spec.cidrs"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct NetworkZoneSpec {
    /// Networks in CIDR notation, IPv4 or IPv6, such as `10.20.0.0/16` or `2001:db8::/48`.
    /// A single host is `/32` (or `/128`).
    #[schemars(length(min = 1, max = 256), inner(length(max = 64)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("every entry must be a CIDR such as 10.0.0.0/8 or 2001:db8::/32"))]
    pub cidrs: Vec<String>,
}
