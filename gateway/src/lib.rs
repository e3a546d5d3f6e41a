//! The Portcullis gateway: terminates SFTP, authenticates, authorizes and audits every file
//! operation at one enforcement point (`session`), and forwards to backends over encrypted
//! channels only.
//!
//! Dependency rule: frontends → session → {policy, audit, backends}; nothing calls back up.
//! Front ends and backends share only the protocol-neutral vocabulary in `fs`.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod backends;
pub mod defender;
pub mod demo;
pub mod frontends;
pub mod fs;
pub mod fuzz;
pub mod gateway;
pub mod login;
pub mod metrics;
pub mod policy;
pub mod reload;
pub mod runtime;
pub mod server;
pub mod session;
pub mod sftp_wire;
pub mod state;
pub mod tls;
