//! The gateway driver (dereference → validate → build → apply → status, with `rollout` and
//! `served`) and the policy kinds' status driver (`policy`). Shared pieces are in
//! [`crate::shared`]; neither driver imports the key ring driver.

pub mod build;
#[cfg(test)]
mod dereference_tests;
#[cfg(test)]
mod fixtures;
pub mod gateway;
pub mod policy;
mod rollout;
mod served;
pub mod validate;
