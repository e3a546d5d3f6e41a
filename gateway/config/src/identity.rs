//! The identity of a config bundle: the hash the operator publishes as `status.configHash` and
//! the gateway reports as the config it serves. One definition, so that the two can be compared.

use sha2::{Digest, Sha256};

use crate::GatewayConfig;

/// SHA-256 over the config text and each file it names, by the name as written in the config
/// (relative to the config's directory) and its contents. A rotated key or certificate changes
/// it even when the text does not; a file the config does not name does not.
///
/// `read` returns a named file's contents; a file it cannot read hashes as empty (compiling the
/// config reports it).
pub fn material_hash(
    text: &str,
    config: &GatewayConfig,
    mut read: impl FnMut(&str) -> Option<Vec<u8>>,
) -> String {
    let mut h = Sha256::new();
    h.update(text.as_bytes());
    h.update([0]);
    for f in config.clone().named_files_mut() {
        h.update(f.as_bytes());
        h.update([0]);
        h.update(read(f).unwrap_or_default());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const TEXT: &str = "the config text";

    fn hash(files: &BTreeMap<&str, &[u8]>) -> String {
        let config = GatewayConfig {
            key_rings: vec![crate::KeyRingFiles {
                name: "gw".into(),
                certificate_file: "tls/a.pem".into(),
                private_key_file: "tls/a.key".into(),
                client_ca_file: None,
                backend_ca_file: None,
            }],
            ..Default::default()
        };
        material_hash(TEXT, &config, |f| files.get(f).map(|v| v.to_vec()))
    }

    #[test]
    fn named_files_count_and_others_do_not() {
        let base = BTreeMap::from([("tls/a.pem", &b"cert"[..]), ("tls/a.key", &b"key"[..])]);
        let first = hash(&base);
        assert_eq!(first.len(), 64);
        assert_eq!(hash(&base), first);
        // A rotated key changes it.
        let mut rotated = base.clone();
        rotated.insert("tls/a.key", b"key2");
        assert_ne!(hash(&rotated), first);
        // A file the config does not name does not.
        let mut extra = base.clone();
        extra.insert("unrelated", b"x");
        assert_eq!(hash(&extra), first);
        // A file that cannot be read hashes as empty.
        let mut missing = base.clone();
        missing.remove("tls/a.pem");
        assert_ne!(hash(&missing), first);
    }
}
