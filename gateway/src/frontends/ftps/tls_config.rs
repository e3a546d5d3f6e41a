//! The control connection's TLS: a config per listener and runtime generation, and a session
//! store of each connection's own.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use portcullis_config::{ClientCertificates, TlsVersion};
use rustls::{
    ServerConfig,
    server::{StoresServerSessions, WebPkiClientVerifier},
};

use crate::{runtime::Runtime, state::Shared, tls::LiveCert};

/// TLS sessions of one control connection only. Tickets stay valid for the connection's life
/// (clients resume the same control session for every data connection), and nothing outside
/// this connection can resume from them.
#[derive(Debug, Default)]
pub(super) struct ConnectionSessions(Mutex<HashMap<Vec<u8>, Vec<u8>>>);

impl StoresServerSessions for ConnectionSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let mut m = self.0.lock().expect("session store poisoned");
        if m.len() >= 64 {
            return false;
        }
        m.insert(key, value);
        true
    }
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0
            .lock()
            .expect("session store poisoned")
            .get(key)
            .cloned()
    }
    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.get(key)
    }
    fn can_cache(&self) -> bool {
        true
    }
}

/// The listener's TLS config for the runtime generation in force, built on the first
/// connection after a reload and shared until the next one.
#[derive(Default)]
pub(super) struct ListenerTls(Mutex<Option<(Arc<Runtime>, Arc<ServerConfig>)>>);

impl ListenerTls {
    /// The TLS config for one connection: the listener's, with a session store of the
    /// connection's own (so that only this control connection's sessions can be resumed).
    pub(super) fn for_connection(
        &self,
        shared: &Arc<Shared>,
        listener: &str,
    ) -> Result<Arc<ServerConfig>, String> {
        let mut config = (*self.current(shared, listener)?).clone();
        config.session_storage = Arc::new(ConnectionSessions::default());
        Ok(Arc::new(config))
    }

    fn current(&self, shared: &Arc<Shared>, listener: &str) -> Result<Arc<ServerConfig>, String> {
        let rt = shared.runtime.load_full();
        let mut cached = self.0.lock().expect("listener TLS cache poisoned");
        if let Some((built_from, config)) = cached.as_ref()
            && Arc::ptr_eq(built_from, &rt)
        {
            return Ok(config.clone());
        }
        let config = listener_tls(shared, &rt, listener)?;
        *cached = Some((rt, config.clone()));
        Ok(config)
    }
}

/// A listener's TLS config, from the runtime `rt`: the key ring's certificate (resolved per
/// handshake, so renewals reach new handshakes), version floor, cipher suites and client
/// certificate policy.
fn listener_tls(
    shared: &Arc<Shared>,
    rt: &Runtime,
    listener: &str,
) -> Result<Arc<ServerConfig>, String> {
    let l = rt
        .config
        .listeners
        .iter()
        .find(|l| l.name == listener)
        .ok_or_else(|| format!("listener {listener} is no longer configured"))?;
    let t = l.tls.as_ref().ok_or("no TLS settings")?;
    let ring = rt
        .certificates
        .get(&t.key_ring)
        .ok_or_else(|| format!("key ring {} is not loaded", t.key_ring))?
        .clone();
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if !t.cipher_suites.is_empty() {
        provider.cipher_suites.retain(|s| {
            // `CipherSuite` holds the provider's names (a test keeps them equal), so none
            // asked for is dropped here unnoticed.
            let name = format!("{:?}", s.suite());
            t.cipher_suites.iter().any(|c| c.as_str() == name)
        });
    }
    let versions: &[&rustls::SupportedProtocolVersion] = match t.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?;
    let builder = match t.client_certificates {
        ClientCertificates::None => builder.with_no_client_auth(),
        mode => {
            let mut roots = rustls::RootCertStore::empty();
            for c in &ring.client_cas {
                roots.add(c.clone()).map_err(|e| e.to_string())?;
            }
            let v = WebPkiClientVerifier::builder(Arc::new(roots));
            let v = if mode == ClientCertificates::Optional {
                v.allow_unauthenticated()
            } else {
                v
            };
            builder.with_client_cert_verifier(
                v.build()
                    .map_err(|e| format!("key ring {}: client CAs: {e}", t.key_ring))?,
            )
        }
    };
    let name = t.key_ring.clone();
    let s = shared.clone();
    let mut config = builder.with_cert_resolver(Arc::new(LiveCert::new(move || {
        s.runtime
            .load()
            .certificates
            .get(&name)
            .map(|c| c.certified.clone())
    })));
    config.send_tls13_tickets = 4;
    Ok(Arc::new(config))
}
