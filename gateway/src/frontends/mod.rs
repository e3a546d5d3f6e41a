//! Front ends: they decode wire requests into `FileOp`s and encode the results. Nothing here
//! decides what is allowed; `Session::execute` does.

pub mod ftps;
pub mod sftp;
