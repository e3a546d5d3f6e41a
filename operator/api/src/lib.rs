//! Portcullis custom resource types (`portcullis.dev/v1alpha1`) and their pure checks.
//!
//! Empty until the operator issue defines the six kinds here; this crate must stay free of
//! client code and of tokio so that the types can be generated into CRD YAML and checked in
//! plain unit tests.
