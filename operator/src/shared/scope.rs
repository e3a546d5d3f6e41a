//! Which namespaces the operator watches: the whole cluster, or the namespaces given with
//! `--watch-namespace` (the chart's `watchNamespaces`), where Roles in those namespaces are all
//! the access it needs: it never lists or watches anything elsewhere.
//!
//! A reflector store takes one watch. With several namespaces, [`Merge`] folds one watch per
//! namespace into the event sequence of a single watch, so that the controllers keep one store
//! per kind either way.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fmt::Debug,
};

use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use k8s_openapi::NamespaceResourceScope;
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{ObjectRef, Store},
        watcher::{self, Event},
    },
};
use serde::de::DeserializeOwned;

/// A kind the operator watches: namespaced, deserializable, and shareable across tasks.
pub trait Watched:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// The namespaces the operator watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Cluster,
    Namespaces(Vec<String>),
}

type Events<K> = BoxStream<'static, Result<Event<K>, watcher::Error>>;

impl Scope {
    pub fn new(namespaces: &[String]) -> Scope {
        let mut ns = namespaces.to_vec();
        ns.sort();
        ns.dedup();
        if ns.is_empty() {
            Scope::Cluster
        } else {
            Scope::Namespaces(ns)
        }
    }

    fn watches<K>(&self, client: &Client, config: &watcher::Config) -> Vec<Events<K>>
    where
        K: Watched,
    {
        let watch = |api: Api<K>| {
            watcher::watcher(api, config.clone())
                .default_backoff()
                .boxed()
        };
        match self {
            Scope::Cluster => vec![watch(Api::all(client.clone()))],
            Scope::Namespaces(list) => list
                .iter()
                .map(|ns| watch(Api::namespaced(client.clone(), ns)))
                .collect(),
        }
    }

    /// The watch events for a reflector writing `store`: the cluster-wide watch as it is, or
    /// one watch per namespace merged by [`Merge`].
    pub fn events<K>(&self, client: &Client, config: &watcher::Config, store: Store<K>) -> Events<K>
    where
        K: Watched,
    {
        let watches = self.watches(client, config);
        let Scope::Namespaces(list) = self else {
            return watches.into_iter().next().expect("one cluster-wide watch");
        };
        let mut merge = Merge::new(list.clone(), store);
        futures::stream::select_all(
            watches
                .into_iter()
                .enumerate()
                .map(|(i, w)| w.map_ok(move |e| (i, e)).boxed()),
        )
        .flat_map(move |item| {
            let out: Vec<Result<Event<K>, watcher::Error>> = match item {
                Ok((i, event)) => merge.step(i, event).into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(out)
        })
        .boxed()
    }

    /// Every object touched in scope (for `Controller::owns_stream`).
    pub fn touched<K>(
        &self,
        client: &Client,
        config: &watcher::Config,
    ) -> BoxStream<'static, Result<K, watcher::Error>>
    where
        K: Watched,
    {
        futures::stream::select_all(
            self.watches(client, config)
                .into_iter()
                .map(|w| w.touched_objects().boxed()),
        )
        .boxed()
    }
}

/// The namespaces whose first list has not ended, and the objects listed so far.
type FirstList<K> = (BTreeSet<usize>, HashMap<ObjectRef<K>, K>);

/// Folds the events of one watch per namespace into those of one watch over all of them.
///
/// A reflector store replaces its whole content at a watch's `InitDone`, so the namespaces'
/// own list phases cannot reach it as they are. Until every namespace has listed once, objects
/// are buffered; then they go out as one `Init` … `InitDone`, which also marks the store
/// ready. After that, a namespace's re-list becomes `Apply` for what it lists and `Delete` for
/// what the store holds in that namespace and the re-list no longer has.
pub struct Merge<K: Resource<DynamicType = ()> + Clone + 'static> {
    /// The first list of every namespace: who has not finished, and what was seen so far.
    initial: Option<FirstList<K>>,
    /// Per namespace re-listing now: what the re-list has named so far.
    relisting: HashMap<usize, HashSet<ObjectRef<K>>>,
    /// Watch `i` watches `namespaces[i]`.
    namespaces: Vec<String>,
    store: Store<K>,
}

impl<K> Merge<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Send + Sync + 'static,
{
    pub fn new(namespaces: Vec<String>, store: Store<K>) -> Merge<K> {
        Merge {
            initial: Some(((0..namespaces.len()).collect(), HashMap::new())),
            relisting: HashMap::new(),
            namespaces,
            store,
        }
    }

    /// What namespace `i`'s `event` becomes in the merged watch.
    pub fn step(&mut self, i: usize, event: Event<K>) -> Vec<Event<K>> {
        if let Some((pending, buffer)) = &mut self.initial {
            match event {
                Event::Init => {
                    // A namespace that starts its first list again drops what it had listed.
                    if let Some(r) = self.relisting.get_mut(&i) {
                        for key in r.drain() {
                            buffer.remove(&key);
                        }
                    }
                }
                Event::InitApply(o) | Event::Apply(o) => {
                    let key = ObjectRef::from_obj(&o);
                    self.relisting.entry(i).or_default().insert(key.clone());
                    buffer.insert(key, o);
                }
                Event::Delete(o) => {
                    buffer.remove(&ObjectRef::from_obj(&o));
                }
                Event::InitDone => {
                    pending.remove(&i);
                }
            }
            if !pending.is_empty() {
                return Vec::new();
            }
            let (_, buffer) = self.initial.take().expect("in the first list");
            self.relisting.clear();
            let mut out = vec![Event::Init];
            out.extend(buffer.into_values().map(Event::InitApply));
            out.push(Event::InitDone);
            return out;
        }
        match event {
            Event::Init => {
                self.relisting.insert(i, HashSet::new());
                Vec::new()
            }
            Event::InitApply(o) => {
                if let Some(seen) = self.relisting.get_mut(&i) {
                    seen.insert(ObjectRef::from_obj(&o));
                }
                vec![Event::Apply(o)]
            }
            Event::InitDone => {
                let seen = self.relisting.remove(&i).unwrap_or_default();
                let ns = self.namespaces[i].as_str();
                self.store
                    .state()
                    .into_iter()
                    .filter(|o| {
                        o.namespace().as_deref() == Some(ns)
                            && !seen.contains(&ObjectRef::from_obj(o.as_ref()))
                    })
                    .map(|o| Event::Delete(o.as_ref().clone()))
                    .collect()
            }
            e @ (Event::Apply(_) | Event::Delete(_)) => vec![e],
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::{api::ObjectMeta, runtime::reflector};

    use super::*;

    fn cm(ns: &str, name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn names(store: &Store<ConfigMap>) -> Vec<String> {
        let mut n: Vec<String> = store
            .state()
            .iter()
            .map(|o| format!("{}/{}", o.namespace().unwrap(), o.name_any()))
            .collect();
        n.sort();
        n
    }

    #[test]
    fn one_watch_per_namespace_fills_one_store_as_one_watch_would() {
        let (store, mut writer) = reflector::store::<ConfigMap>();
        let mut merge = Merge::new(vec!["a".into(), "b".into()], store.clone());
        let mut feed = |merge: &mut Merge<ConfigMap>, i: usize, e: Event<ConfigMap>| {
            let out = merge.step(i, e);
            for e in &out {
                writer.apply_watcher_event(e);
            }
            out.len()
        };
        // Until both namespaces have listed, nothing reaches the store, which is not ready.
        assert_eq!(feed(&mut merge, 0, Event::Init), 0);
        assert_eq!(feed(&mut merge, 0, Event::InitApply(cm("a", "x"))), 0);
        assert_eq!(feed(&mut merge, 0, Event::InitDone), 0);
        assert_eq!(feed(&mut merge, 1, Event::Init), 0);
        assert_eq!(feed(&mut merge, 0, Event::Apply(cm("a", "z"))), 0);
        assert_eq!(feed(&mut merge, 1, Event::InitApply(cm("b", "y"))), 0);
        assert_eq!(feed(&mut merge, 1, Event::InitApply(cm("b", "gone"))), 0);
        assert_eq!(feed(&mut merge, 1, Event::Delete(cm("b", "gone"))), 0);
        assert!(names(&store).is_empty());
        assert!(
            futures::FutureExt::now_or_never(store.wait_until_ready()).is_none(),
            "ready before every namespace listed"
        );
        // b's first list ends: everything at once, and the store is ready.
        assert_eq!(feed(&mut merge, 1, Event::InitDone), 5);
        assert_eq!(names(&store), ["a/x", "a/z", "b/y"]);
        assert!(futures::FutureExt::now_or_never(store.wait_until_ready()).is_some());
        // a re-lists after a watch gap in which z was deleted: x stays, z goes, b is untouched.
        feed(&mut merge, 0, Event::Init);
        feed(&mut merge, 0, Event::InitApply(cm("a", "x")));
        feed(&mut merge, 0, Event::InitApply(cm("a", "new")));
        assert_eq!(names(&store), ["a/new", "a/x", "a/z", "b/y"]);
        feed(&mut merge, 0, Event::InitDone);
        assert_eq!(names(&store), ["a/new", "a/x", "b/y"]);
        // b re-lists empty: its objects go, a's stay.
        feed(&mut merge, 1, Event::Init);
        feed(&mut merge, 1, Event::InitDone);
        assert_eq!(names(&store), ["a/new", "a/x"]);
        // Changes pass as they are.
        feed(&mut merge, 1, Event::Apply(cm("b", "w")));
        feed(&mut merge, 0, Event::Delete(cm("a", "x")));
        assert_eq!(names(&store), ["a/new", "b/w"]);
    }

    #[test]
    fn a_namespace_that_restarts_its_first_list_drops_what_it_had_listed() {
        let (store, mut writer) = reflector::store::<ConfigMap>();
        let mut merge = Merge::new(vec!["a".into(), "b".into()], store.clone());
        for (i, e) in [
            (0, Event::Init),
            (0, Event::InitApply(cm("a", "old"))),
            (0, Event::Init),
            (0, Event::InitApply(cm("a", "x"))),
            (0, Event::InitDone),
            (1, Event::Init),
            (1, Event::InitDone),
        ] {
            for e in merge.step(i, e) {
                writer.apply_watcher_event(&e);
            }
        }
        assert_eq!(names(&store), ["a/x"]);
    }

    #[test]
    fn a_scope_is_the_cluster_or_a_sorted_set_of_namespaces_once_each() {
        assert_eq!(Scope::new(&[]), Scope::Cluster);
        let s = Scope::new(&["b".into(), "a".into(), "b".into()]);
        assert_eq!(s, Scope::Namespaces(vec!["a".into(), "b".into()]));
    }
}
