//! `portcullis-operator`: reconciles transfer policy into gateway deployments.
//!
//! A skeleton: the operator issue fills in `crd` and `run`. Until then it says so and exits
//! non-zero rather than pretending to work.

use std::process::ExitCode;

fn main() -> ExitCode {
    let command = std::env::args().nth(1).unwrap_or_default();
    eprintln!(
        "portcullis-operator {}: `{command}` is not implemented yet (the operator issue adds `crd` and `run`)",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(2)
}
