//! What the controllers read from: one watch per policy kind, shared by every controller, and
//! Secrets fetched only when a policy object names them.
//!
//! Each kind has a reflector store that reconciles read from, with no API request, and a
//! fan-out that hands every touched object (applied, deleted, or seen again on a re-list) to
//! each controller that subscribed, to map to the objects it reconciles. kube's own shared
//! streams do not pass deletions on, and a deleted zone must reach its gateways.
//!
//! Secrets are watched by metadata only: the operator never holds the data of a Secret that no
//! policy object names. A named Secret is fetched with a targeted GET and kept until the watch
//! shows it changed or deleted.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Debug,
    hash::Hash,
    sync::{Arc, Mutex},
};

use futures::{FutureExt, Stream, StreamExt, TryStreamExt, future::BoxFuture};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use portcullis_api::{
    KeyRing, NetworkZone, TransferEndpoint, TransferGateway, TransferRole, TransferUser,
};
use tokio::sync::mpsc;

use super::{
    dereference::World,
    scope::{Scope, Watched},
};

/// GETs of named Secrets in flight at once for one reconcile.
const SECRET_FETCHES: usize = 8;

/// One kind's store and the controllers subscribed to its changes.
pub struct Shared<K: reflector::Lookup + 'static>
where
    K::DynamicType: Hash + Eq,
{
    store: Store<K>,
    subscribers: Arc<Mutex<Vec<mpsc::UnboundedSender<K>>>>,
}

impl<K> Shared<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Send + Sync + 'static,
{
    /// The store and the future that keeps it (and the subscribers) fed; the future runs until
    /// the process ends.
    fn new<S>(
        what: &'static str,
        events: impl FnOnce(Store<K>) -> S,
    ) -> (Self, BoxFuture<'static, ()>)
    where
        S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    {
        let (store, writer) = reflector::store();
        let events = events(store.clone());
        let subscribers: Arc<Mutex<Vec<mpsc::UnboundedSender<K>>>> = Arc::default();
        let fan_out = subscribers.clone();
        let driver = reflector::reflector(writer, events)
            .for_each(move |event| {
                match event {
                    Ok(
                        watcher::Event::Apply(obj)
                        | watcher::Event::Delete(obj)
                        | watcher::Event::InitApply(obj),
                    ) => lock(&fan_out).retain(|tx| tx.send(obj.clone()).is_ok()),
                    Ok(_) => {}
                    // The watcher backs off and re-lists by itself.
                    Err(e) => tracing::warn!(kind = what, error = %e, "watch failed; retrying"),
                }
                futures::future::ready(())
            })
            .boxed();
        (Shared { store, subscribers }, driver)
    }

    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Every object touched from now on, as a controller trigger.
    pub fn subscribe(&self) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.subscribers).push(tx);
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|o| (Ok(o), rx)) },
        )
    }

    /// The namespace's objects, by name.
    pub fn in_namespace(&self, ns: &str) -> BTreeMap<String, K> {
        self.store
            .state()
            .into_iter()
            .filter(|o| o.namespace().as_deref() == Some(ns))
            .map(|o| (o.name_any(), o.as_ref().clone()))
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The gateways' and policy kinds' stores, the Secrets' metadata, and the Secrets fetched so far.
pub struct Caches {
    /// The gateways themselves: the gateway controller's store, and what key rings publish
    /// audit keys from.
    pub gateways: Shared<TransferGateway>,
    pub endpoints: Shared<TransferEndpoint>,
    pub zones: Shared<NetworkZone>,
    pub key_rings: Shared<KeyRing>,
    pub users: Shared<TransferUser>,
    pub roles: Shared<TransferRole>,
    /// Every Secret's metadata: what exists, at which `resourceVersion`.
    pub secrets: Shared<PartialObjectMeta<Secret>>,
    /// (namespace, name) → the fetched Secret, while its `resourceVersion` is current.
    fetched: Mutex<HashMap<(String, String), Arc<Secret>>>,
}

impl Caches {
    /// The caches and the future that feeds them. Subscribe before polling the future, and
    /// read only after [`Caches::ready`].
    pub fn new(client: &Client, scope: &Scope) -> (Arc<Caches>, BoxFuture<'static, ()>) {
        fn shared<K>(
            client: &Client,
            scope: &Scope,
            what: &'static str,
        ) -> (Shared<K>, BoxFuture<'static, ()>)
        where
            K: Watched,
        {
            Shared::new(what, |store| {
                scope.events(client, &watcher::Config::default(), store)
            })
        }
        let (gateways, g) = shared(client, scope, "TransferGateway");
        let (endpoints, a) = shared(client, scope, "TransferEndpoint");
        let (zones, b) = shared(client, scope, "NetworkZone");
        let (key_rings, c) = shared(client, scope, "KeyRing");
        let (users, d) = shared(client, scope, "TransferUser");
        let (roles, e) = shared(client, scope, "TransferRole");
        // `Api<PartialObjectMeta<_>>` asks for metadata only.
        let (secrets, f) = shared::<PartialObjectMeta<Secret>>(client, scope, "Secret");
        let touched = secrets.subscribe();
        let caches = Arc::new(Caches {
            gateways,
            endpoints,
            zones,
            key_rings,
            users,
            roles,
            secrets,
            fetched: Mutex::default(),
        });
        // A fetched Secret is dropped as soon as the watch shows it changed or deleted, so
        // the cache holds only current data and never outlives the Secret.
        let forget = {
            let caches = Arc::downgrade(&caches);
            touched.for_each(move |s| {
                if let (Ok(meta), Some(caches)) = (s, caches.upgrade()) {
                    caches.forget_if_stale(&meta);
                }
                futures::future::ready(())
            })
        };
        let driver = async move {
            futures::join!(g, a, b, c, d, e, f, forget);
        }
        .boxed();
        (caches, driver)
    }

    /// Caches holding `listed` as their first full list (for tests), ready to read.
    #[cfg(test)]
    pub async fn holding(listed: Listed) -> Arc<Caches> {
        fn fixed<K>(what: &'static str, objs: Vec<K>) -> (Shared<K>, BoxFuture<'static, ()>)
        where
            K: Resource<DynamicType = ()> + Clone + Debug + Send + Sync + 'static,
        {
            Shared::new(what, move |_| {
                let events = std::iter::once(watcher::Event::Init)
                    .chain(objs.into_iter().map(watcher::Event::InitApply))
                    .chain(std::iter::once(watcher::Event::InitDone))
                    .map(Ok);
                futures::stream::iter(events).chain(futures::stream::pending())
            })
        }
        let (gateways, g) = fixed("TransferGateway", listed.gateways);
        let (endpoints, a) = fixed("TransferEndpoint", listed.endpoints);
        let (zones, b) = fixed("NetworkZone", listed.zones);
        let (key_rings, c) = fixed("KeyRing", listed.key_rings);
        let (users, d) = fixed("TransferUser", listed.users);
        let (roles, e) = fixed("TransferRole", listed.roles);
        let (secrets, f) = fixed("Secret", listed.secrets);
        tokio::spawn(async move {
            futures::join!(g, a, b, c, d, e, f);
        });
        let caches = Arc::new(Caches {
            gateways,
            endpoints,
            zones,
            key_rings,
            users,
            roles,
            secrets,
            fetched: Mutex::default(),
        });
        caches.ready().await;
        caches
    }

    /// Drops the fetched copy of `meta`'s Secret unless the store still holds it at the same
    /// `resourceVersion`.
    fn forget_if_stale(&self, meta: &PartialObjectMeta<Secret>) {
        let ns = meta.namespace().unwrap_or_default();
        let name = meta.name_any();
        let current = self
            .secrets
            .store
            .get(&ObjectRef::new(&name).within(&ns))
            .and_then(|m| m.resource_version());
        let mut fetched = lock(&self.fetched);
        let key = (ns, name);
        if fetched
            .get(&key)
            .is_some_and(|s| s.resource_version() != current)
        {
            fetched.remove(&key);
        }
    }

    /// Resolves once every store holds its first full list.
    pub async fn ready(&self) {
        // A store's writer lives as long as its driver, which never ends.
        let _ = futures::join!(
            self.gateways.store.wait_until_ready(),
            self.endpoints.store.wait_until_ready(),
            self.zones.store.wait_until_ready(),
            self.key_rings.store.wait_until_ready(),
            self.users.store.wait_until_ready(),
            self.roles.store.wait_until_ready(),
            self.secrets.store.wait_until_ready(),
        );
    }

    /// A namespace's policy objects as the stores hold them; no Secrets. Pure: no request.
    pub fn snapshot(&self, ns: &str) -> World {
        World {
            endpoints: self.endpoints.in_namespace(ns),
            zones: self.zones.in_namespace(ns),
            key_rings: self.key_rings.in_namespace(ns),
            users: self.users.in_namespace(ns),
            roles: self.roles.in_namespace(ns),
            secrets: BTreeMap::new(),
            now: time::OffsetDateTime::now_utc().unix_timestamp(),
        }
    }

    /// `world` with the Secrets in `names` that exist. A Secret already fetched at the
    /// `resourceVersion` the watch shows costs nothing; any other costs one GET.
    pub async fn with_secrets(
        &self,
        client: &Client,
        ns: &str,
        mut world: World,
        names: BTreeSet<String>,
    ) -> kube::Result<World> {
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        let mut missing = Vec::new();
        for name in names {
            let key = ObjectRef::<PartialObjectMeta<Secret>>::new(&name).within(ns);
            let Some(meta) = self.secrets.store.get(&key) else {
                continue; // Not there (or not seen yet: its arrival triggers a reconcile).
            };
            let cached = lock(&self.fetched)
                .get(&(ns.to_owned(), name.clone()))
                .filter(|s| s.resource_version() == meta.resource_version())
                .cloned();
            match cached {
                Some(s) => {
                    world.secrets.insert(name, s.as_ref().clone());
                }
                None => missing.push(name),
            }
        }
        let fetched: Vec<Secret> = futures::stream::iter(missing)
            .map(|name| {
                let api = api.clone();
                async move { api.get_opt(&name).await }
            })
            .buffer_unordered(SECRET_FETCHES)
            .try_filter_map(|s| futures::future::ready(Ok(s)))
            .try_collect()
            .await?;
        let mut cache = lock(&self.fetched);
        for s in fetched {
            let name = s.name_any();
            cache.insert((ns.to_owned(), name.clone()), Arc::new(s.clone()));
            world.secrets.insert(name, s);
        }
        Ok(world)
    }
}

/// What test caches hold: the first list of each kind.
#[cfg(test)]
#[derive(Default)]
pub struct Listed {
    pub gateways: Vec<TransferGateway>,
    pub endpoints: Vec<TransferEndpoint>,
    pub zones: Vec<NetworkZone>,
    pub key_rings: Vec<KeyRing>,
    pub users: Vec<TransferUser>,
    pub roles: Vec<TransferRole>,
    /// Secrets' metadata; a reconcile GETs the data of those it needs.
    pub secrets: Vec<PartialObjectMeta<Secret>>,
}
