//! The operator's main loop: the client, leader election, metrics, the shared caches, and the
//! drivers (gateway, key ring, policy) wired to them. The one module that knows every driver.

use std::{sync::Arc, time::Duration};

use futures::{FutureExt, StreamExt, TryStreamExt, future::ready};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Secret, Service, ServiceAccount},
    networking::v1::NetworkPolicy,
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Client, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller,
        events::{Recorder, Reporter},
        reflector::ObjectRef,
        watcher,
    },
};
use portcullis_api::{KeyRing, TransferGateway};

use crate::{
    RunArgs,
    controller::{gateway, policy},
    metrics::Metrics,
    shared::{
        Context, MANAGED_BY, Stop, cache::Caches, error_policy, foreign, in_namespace, scope::Scope,
    },
};

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let counted = metrics.clone();
    let client = kube::client::ClientBuilder::try_from(kube::Config::infer().await?)?
        .with_layer(&tower::util::MapRequestLayer::new(
            move |req: hyper::Request<kube::client::Body>| {
                counted.count_request(&req);
                req
            },
        ))
        .build();
    let identity = args.identity.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim(),
            std::process::id()
        )
    });
    let metrics_task = tokio::spawn(crate::metrics::serve(args.metrics_addr, metrics.clone()));

    let stop: Stop = async {
        shutdown_signal().await;
        tracing::info!("shutting down");
    }
    .boxed()
    .shared();
    let stopped = {
        let stop = stop.clone();
        move || stop.clone()
    };
    tokio::spawn(stop.clone());

    let mut leader = None;
    if args.leader_election {
        let ns = args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let manager =
            kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.lease_name)
                .with_namespace(&ns)
                .with_identity(&identity)
                .with_duration(args.lease_duration_seconds)
                .with_grace(2)
                .build()
                .await?;
        let (mut rx, task) = manager.watch().await;
        tracing::info!(
            identity,
            lease = args.lease_name,
            namespace = ns,
            "waiting for the leader lease"
        );
        tokio::select! {
            r = rx.wait_for(|l| *l) => { r?; }
            _ = stopped() => return Ok(()),
        }
        tracing::info!(identity, "leading");
        leader = Some((rx, task));
    }
    metrics.leader.set(1);
    if args.manage_crds {
        crate::crds::upgrade(&client).await?;
    }

    let scope = Scope::new(&args.watch_namespace);
    match &scope {
        Scope::Cluster => tracing::info!("watching every namespace"),
        Scope::Namespaces(ns) => tracing::info!(namespaces = ?ns, "watching these namespaces only"),
    }
    let (caches, feed) = Caches::new(&client, &scope);
    let ctx = Arc::new(Context {
        client: client.clone(),
        caches: caches.clone(),
        allowed_images: args.allowed_gateway_image.clone(),
        admin_namespaces: admin_namespaces(&args),
        metrics: metrics.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "portcullis-operator".into(),
                instance: Some(identity.clone()),
            },
        ),
    });
    let controllers = run_controllers(client, &scope, caches, feed, ctx, stopped.clone());
    let lost = async {
        match &mut leader {
            Some((rx, _)) => {
                let _ = rx.wait_for(|l| !*l).await;
            }
            None => futures::future::pending::<()>().await,
        }
    };
    let result = tokio::select! {
        () = controllers => Ok(()),
        () = lost => Err(anyhow::anyhow!("lost the leader lease; exiting so that a restart rejoins the election")),
    };
    metrics.leader.set(0);
    metrics_task.abort();
    // Dropping the receiver makes the lease manager release the lease for a fast hand-over.
    if let Some((rx, task)) = leader {
        drop(rx);
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    result
}

/// The operator's own namespace (when it runs in a pod) and the metrics namespaces, once each.
fn admin_namespaces(args: &RunArgs) -> Vec<String> {
    let mut out: Vec<String> = args.pod_namespace.iter().cloned().collect();
    for ns in &args.metrics_namespace {
        if !out.contains(ns) {
            out.push(ns.clone());
        }
    }
    out
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn run_controllers(
    client: Client,
    scope: &Scope,
    caches: Arc<Caches>,
    feed: futures::future::BoxFuture<'static, ()>,
    ctx: Arc<Context>,
    stopped: impl Fn() -> Stop + Clone,
) {
    let wc = watcher::Config::default();

    let store = caches.gateways.store();
    let gw = Controller::for_stream(caches.gateways.subscribe(), store.clone())
        .owns_stream(scope.touched::<Deployment>(&client, &wc))
        .owns_stream(scope.touched::<Service>(&client, &wc))
        .owns_stream(
            scope.touched::<PartialObjectMeta<Secret>>(
                &client,
                &wc.clone()
                    .labels(&format!("app.kubernetes.io/managed-by={}", MANAGED_BY)),
            ),
        )
        .owns_stream(scope.touched::<NetworkPolicy>(&client, &wc))
        .owns_stream(scope.touched::<PodDisruptionBudget>(&client, &wc))
        .owns_stream(scope.touched::<ServiceAccount>(&client, &wc))
        .watches_stream(caches.endpoints.subscribe(), in_namespace(store.clone()))
        .watches_stream(caches.zones.subscribe(), in_namespace(store.clone()))
        .watches_stream(caches.key_rings.subscribe(), in_namespace(store.clone()))
        .watches_stream(caches.users.subscribe(), in_namespace(store.clone()))
        .watches_stream(caches.roles.subscribe(), in_namespace(store.clone()))
        .watches_stream(
            caches.secrets.subscribe().try_filter(|s| ready(foreign(s))),
            in_namespace(store.clone()),
        )
        .graceful_shutdown_on(stopped())
        .run(gateway::reconcile, error_policy, ctx.clone())
        .for_each(|_| ready(()))
        .boxed();

    let kr_store = caches.key_rings.store();
    let kr = Controller::for_stream(caches.key_rings.subscribe(), kr_store.clone())
        .watches_stream(
            caches.secrets.subscribe(),
            move |s: PartialObjectMeta<Secret>| {
                let ns = s.namespace();
                if !foreign(&s) {
                    // The key ring's own Secrets, which carry no owner reference unless its
                    // deletionPolicy is Delete: found by their labels.
                    return crate::shared::keyring_secret::keyring_of(&s.metadata)
                        .map(|name| {
                            ObjectRef::<KeyRing>::new(&name).within(&ns.unwrap_or_default())
                        })
                        .into_iter()
                        .collect();
                }
                // A key ring issued from (or trusting) a Secret follows it.
                let name = s.name_any();
                kr_store
                    .state()
                    .iter()
                    .filter(|k| {
                        k.namespace() == ns && crate::shared::keyring_secret::uses_secret(k, &name)
                    })
                    .map(|k| ObjectRef::from_obj(k.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        // A key ring publishes the audit keys of the gateways that name it, or named it.
        .watches_stream(caches.gateways.subscribe(), {
            let (kr_store, gw_store) = (caches.key_rings.store(), caches.gateways.store());
            move |g: TransferGateway| {
                // The store has applied the event already: a deleted gateway is not in it.
                let exists = gw_store.get(&ObjectRef::from_obj(&g)).is_some();
                kr_store
                    .state()
                    .iter()
                    .filter(|k| {
                        k.namespace() == g.namespace()
                            && crate::keyring::publishes_stale_keys_of(k, &g, exists)
                    })
                    .map(|k| ObjectRef::from_obj(k.as_ref()))
                    .collect::<Vec<_>>()
            }
        })
        .graceful_shutdown_on(stopped())
        .run(crate::keyring::reconcile, error_policy, ctx.clone())
        .for_each(|_| ready(()))
        .boxed();

    let policies = [
        policy::controller(&caches.endpoints, &caches, ctx.clone(), stopped.clone()),
        policy::controller(&caches.zones, &caches, ctx.clone(), stopped.clone()),
        policy::controller(&caches.users, &caches, ctx.clone(), stopped.clone()),
        policy::controller(&caches.roles, &caches, ctx.clone(), stopped.clone()),
    ];
    // Every controller has subscribed; now the caches may fill. Reconciles start once every
    // store holds its first list, so none compiles from a half-filled cache. The feed never
    // ends; the controllers end on the stop signal.
    let controllers = async move {
        caches.ready().await;
        tracing::info!("caches filled; reconciling");
        futures::join!(gw, kr, futures::future::join_all(policies));
    };
    tokio::select! {
        () = controllers => {}
        () = feed => {}
    }
}
