//! Prometheus metrics: sessions, auth failures, bytes and operations by result.

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    pub sessions: Family<Labels, Gauge>,
    pub sessions_total: Family<Labels, Counter>,
    pub auth_failures: Family<Labels, Counter>,
    pub connections_refused: Family<Labels, Counter>,
    pub bytes: Family<Labels, Counter>,
    pub operations: Family<Labels, Counter>,
    pub config_reloads: Family<Labels, Counter>,
    pub audit_write_errors: Counter,
    /// 1 while new logins and transfers are refused because the audit cannot be made durable.
    pub audit_refusing: Gauge,
    pub audit_refusals: Family<Labels, Counter>,
    pub audit_spool_bytes: Gauge,
    pub audit_rotations: Counter,
    pub audit_shipped: Counter,
    pub audit_ship_failures: Counter,
    pub defender_bans: Family<Labels, Counter>,
    pub defender_dropped: Family<Labels, Counter>,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        let m = Metrics {
            sessions: Family::default(),
            sessions_total: Family::default(),
            auth_failures: Family::default(),
            connections_refused: Family::default(),
            bytes: Family::default(),
            operations: Family::default(),
            config_reloads: Family::default(),
            audit_write_errors: Counter::default(),
            audit_refusing: Gauge::default(),
            audit_refusals: Family::default(),
            audit_spool_bytes: Gauge::default(),
            audit_rotations: Counter::default(),
            audit_shipped: Counter::default(),
            audit_ship_failures: Counter::default(),
            defender_bans: Family::default(),
            defender_dropped: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "sessions",
            "Authenticated sessions now open",
            m.sessions.clone(),
        );
        registry.register(
            "sessions_started",
            "Authenticated sessions started",
            m.sessions_total.clone(),
        );
        registry.register(
            "auth_failures",
            "Failed authentication attempts, by reason",
            m.auth_failures.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed before the banner, by reason",
            m.connections_refused.clone(),
        );
        registry.register("bytes", "File bytes moved, by direction", m.bytes.clone());
        registry.register(
            "operations",
            "File operations, by operation and result",
            m.operations.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads, by result",
            m.config_reloads.clone(),
        );
        registry.register(
            "audit_write_errors",
            "Audit sink write failures",
            m.audit_write_errors.clone(),
        );
        registry.register(
            "audit_refusing",
            "1 while new logins and transfers are refused: the audit trail cannot be made durable (failClosed, or a full spool)",
            m.audit_refusing.clone(),
        );
        registry.register(
            "audit_refusals",
            "Logins and transfers refused while the audit trail could not be made durable, by what was refused",
            m.audit_refusals.clone(),
        );
        registry.register(
            "audit_spool_bytes",
            "Bytes in the audit file sink's active and rotated files",
            m.audit_spool_bytes.clone(),
        );
        registry.register(
            "audit_rotations",
            "Audit files rotated",
            m.audit_rotations.clone(),
        );
        registry.register(
            "audit_shipped_records",
            "Audit records the collector took (a record sent again after an outage counts again)",
            m.audit_shipped.clone(),
        );
        registry.register(
            "audit_ship_failures",
            "Batches the audit collector did not take (refused, unreachable, no answer)",
            m.audit_ship_failures.clone(),
        );
        registry.register(
            "defender_bans",
            "Defender bans applied here, by kind (address, user) and origin (local, peer)",
            m.defender_bans.clone(),
        );
        registry.register(
            "defender_datagrams_dropped",
            "Defender datagrams from peers dropped, by reason (bad MAC, stale, ...)",
            m.defender_dropped.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    pub fn op(&self, op: &'static str, result: &str) {
        self.operations
            .get_or_create(&vec![("op", op.to_owned()), ("result", result.to_owned())])
            .inc();
    }

    pub fn auth_failure(&self, reason: &str) {
        self.auth_failures
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }
}
