#!/usr/bin/env bash
# A real, local Kubernetes cluster for tests and the demo, built from pinned Go modules
# (e2e/controlplane): etcd, kube-apiserver, kube-controller-manager and kube-scheduler, and with
# --node one real node: containerd (Debian's, with runc), the kubelet, kube-proxy, the CNI bridge
# and kube-router as the NetworkPolicy enforcer. Images are built here (e2e/images/build.sh) and
# imported; nothing is pulled from anywhere.
#
#   e2e/cluster.sh up [--node]  builds what is missing, starts the daemons, installs crds/,
#                               and prints `export KUBECONFIG=...`
#   e2e/cluster.sh load         (with a node) rebuilds the images if their inputs changed and
#                               imports them into the node's containerd
#   e2e/cluster.sh down         stops exactly what `up` started and removes the state: no
#                               process, mount, netns, bridge, route or iptables chain is left
#   e2e/cluster.sh env          prints the export line again
#
# Without --node, no container runs: Deployments get ReplicaSets and Pods that stay Pending.
#
# The node's addresses are all from 198.18.0.0/15, the range set aside for network tests, and
# nothing is routed anywhere else (docs/kubernetes.md, "The test node"):
#   198.18.0.0/24    pods, on the bridge pcbr0; 198.18.0.1 is the node (and the apiserver)
#   198.18.16.0/24   Services (198.18.16.1 is the `kubernetes` Service)
#   198.18.32.0/19   left for test hosts in network namespaces (veths named pc*)
# Pods get one route, 198.18.0.0/15 via the node, and no default route; the node drops (mangle
# FORWARD) anything from a pc* interface that would leave through another interface, and a
# blackhole route covers the rest of 198.18.0.0/15. There is no masquerading.
#
# Only one cluster with a node can be up at a time (the bridge and the addresses are fixed).
# State lives in ${PORTCULLIS_CLUSTER_DIR:-e2e/.work/cluster}; logs are in its logs/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
dir="${PORTCULLIS_CLUSTER_DIR:-$here/.work/cluster}"
mkdir -p "$(dirname "$dir")"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_for() { # description, seconds, command...
  local what="$1" secs="$2"; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      echo "cluster.sh: $what did not come up within ${secs}s; logs in $dir/logs" >&2
      return 1
    fi
    sleep 0.3
  done
}

start() { # name, command...
  local name="$1"; shift
  "$@" >"$dir/logs/$name.log" 2>&1 &
  echo "$! $name" >>"$dir/pids"
}

up() {
  local node=false
  [[ "${1:-}" == "--node" ]] && node=true
  if [[ -f "$dir/pids" ]] && all_running; then
    echo "cluster.sh: already up" >&2
    print_env
    return 0
  fi
  [[ -f "$dir/pids" ]] && down
  local bin
  bin="$("$here/controlplane/build.sh")"
  rm -rf "$dir"
  mkdir -p "$dir/logs" "$dir/pki" "$dir/etcd"
  echo "$bin" >"$dir/bin"
  touch "$dir/pids"
  # The apiserver listens where the host reaches it: loopback, or the node's address, which
  # pods reach too (through the `kubernetes` Service, for in-cluster config).
  local api_addr=127.0.0.1
  if $node; then
    node_network
    api_addr=$node_ip
  fi

  local etcd_port etcd_peer api_port kcm_port
  etcd_port=$(free_port); etcd_peer=$(free_port); api_port=$(free_port); kcm_port=$(free_port)

  # A CA, the apiserver's serving certificate for 127.0.0.1/localhost, and the service
  # account signing key. The admin credential is a client certificate (system:masters).
  local pki="$dir/pki"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=portcullis-e2e-ca" -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,IP:%s,IP:%s,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' "$node_ip" "$kubernetes_service_ip" >"$pki/apiserver.ext"
  openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -CAcreateserial -days 30 -extfile "$pki/apiserver.ext" -out "$pki/apiserver.crt" 2>/dev/null
  client_cert admin /O=system:masters/CN=admin
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null

  echo "https://$api_addr:$api_port" >"$dir/server"
  kubeconfig admin >"$dir/kubeconfig"

  start etcd "$bin/etcd" --data-dir "$dir/etcd" --name e2e \
    --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "e2e=http://127.0.0.1:$etcd_peer" \
    --unsafe-no-fsync --quota-backend-bytes 2147483648
  wait_for etcd 30 curl -sf "http://127.0.0.1:$etcd_port/health"

  start kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address "$api_addr" --advertise-address "$api_addr" --secure-port "$api_port" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --service-account-key-file "$pki/sa.pub" \
    --service-account-signing-key-file "$pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc \
    --authorization-mode Node,RBAC \
    --service-cluster-ip-range "$service_cidr" \
    --kubelet-client-certificate "$pki/admin.crt" --kubelet-client-key "$pki/admin.key" \
    --kubelet-preferred-address-types InternalIP \
    --allow-privileged=false --profiling=false
  wait_for kube-apiserver 90 curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" \
    --key "$pki/admin.key" "https://$api_addr:$api_port/readyz"

  start kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$dir/kubeconfig" \
    --authentication-kubeconfig "$dir/kubeconfig" --authorization-kubeconfig "$dir/kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$kcm_port" \
    --leader-elect=false --use-service-account-credentials=false \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
    --controllers '*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller,-persistentvolume-binder,-attachdetach'
  wait_for kube-controller-manager 60 curl -skf "https://127.0.0.1:$kcm_port/healthz"

  export KUBECONFIG="$dir/kubeconfig"
  wait_for "the default namespace" 30 "$bin/kubectl" get namespace default
  "$bin/kubectl" apply --server-side --field-manager=cluster.sh -f "$repo/crds/" >&2
  # Not recursive: crds/schemas/ holds the JSON Schemas, which are not objects.
  "$bin/kubectl" wait --for condition=established --timeout=60s --recursive=false -f "$repo/crds/" >&2
  if $node; then
    node_up
  fi
  print_env
}

# Fixed addresses of the node (see the header).
node_ip=198.18.0.1
pod_cidr=198.18.0.0/24
service_cidr=198.18.16.0/24
kubernetes_service_ip=198.18.16.1
test_range=198.18.0.0/15
bridge=pcbr0
node_name=portcullis-node
# The node forwards only between pc* interfaces (the bridge and the test hosts' veths): these
# mangle FORWARD matches are dropped, both ways.
forward_drops=("-i pc+ ! -o pc+" "-o pc+ ! -i pc+")

client_cert() { # file stem, subject: a client certificate signed by the cluster CA
  local pki="$dir/pki" stem=$1 subject=$2
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "$subject" \
    -keyout "$pki/$stem.key" -out "$pki/$stem.csr" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' >"$pki/$stem.ext"
  openssl x509 -req -in "$pki/$stem.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -CAcreateserial -days 30 -extfile "$pki/$stem.ext" -out "$pki/$stem.crt" 2>/dev/null
}

kubeconfig() { # file stem of a client certificate: a kubeconfig for it
  cat <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: portcullis-e2e
  cluster:
    server: $(cat "$dir/server")
    certificate-authority: $dir/pki/ca.crt
users:
- name: $1
  user:
    client-certificate: $dir/pki/$1.crt
    client-key: $dir/pki/$1.key
contexts:
- name: portcullis-e2e
  context: {cluster: portcullis-e2e, user: $1, namespace: default}
current-context: portcullis-e2e
KCFG
}

# The node's network: the bridge with the node's address, forwarding confined to pc*
# interfaces, and a blackhole for the rest of the test range. Recorded in $dir/node so that
# `down` undoes exactly this.
node_network() {
  if ip link show "$bridge" >/dev/null 2>&1; then
    echo "cluster.sh: $bridge exists: another cluster with a node is up (or was not taken down)" >&2
    return 1
  fi
  mkdir -p "$dir/node"
  sysctl -n net.ipv4.ip_forward >"$dir/node/ip_forward"
  ip link add "$bridge" type bridge
  echo "link $bridge" >>"$dir/node/undo"
  ip addr add "$node_ip/24" dev "$bridge"
  ip link set "$bridge" up
  ip route add blackhole "$test_range"
  echo "route blackhole $test_range" >>"$dir/node/undo"
  local match
  for match in "${forward_drops[@]}"; do
    # shellcheck disable=SC2086 # the match is several words on purpose
    iptables -t mangle -I FORWARD 1 $match -j DROP -m comment --comment portcullis-e2e
  done
  echo "mangle" >>"$dir/node/undo"
  sysctl -qw net.ipv4.ip_forward=1
}

node_up() {
  local bin pki="$dir/pki" version
  bin="$(cat "$dir/bin")"
  version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml")
  mkdir -p "$dir/node/cni/net.d" "$dir/node/cni/ipam" "$dir/node/kubelet" "$dir/node/containerd"
  local n="$dir/node"

  # Identities: the kubelet (Node authorizer), kube-proxy and the scheduler by their built-in
  # RBAC names; kube-router (test-only) as admin.
  client_cert node "/O=system:nodes/CN=system:node:$node_name"
  client_cert kube-proxy "/CN=system:kube-proxy"
  client_cert scheduler "/CN=system:kube-scheduler"
  kubeconfig node >"$n/node.kubeconfig"
  kubeconfig kube-proxy >"$n/kube-proxy.kubeconfig"
  kubeconfig scheduler >"$n/scheduler.kubeconfig"

  local sched_port
  sched_port=$(free_port)
  start kube-scheduler "$bin/kube-scheduler" --kubeconfig "$n/scheduler.kubeconfig" \
    --authentication-kubeconfig "$n/scheduler.kubeconfig" \
    --authorization-kubeconfig "$n/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$sched_port" --leader-elect=false
  wait_for kube-scheduler 60 curl -skf "https://127.0.0.1:$sched_port/healthz"

  # containerd: a private instance (its own socket, root, state and runc root) with the CRI
  # plugin, runc, overlayfs, cgroupfs. restrict_oom_score_adj: this machine lacks
  # CAP_SYS_RESOURCE, so a sandbox may not lower its oom_score_adj.
  cat >"$n/containerd/config.toml" <<TOML
version = 2
root = "$n/containerd/root"
state = "$n/containerd/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$n/containerd.sock"
[ttrpc]
  address = "$n/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/portcullis/pause:$version"
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$n/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$n/cni/net.d"
TOML
  # The bridge gives each pod an address in the pod range and one route, the test range via
  # the node: no default route, no masquerading.
  cat >"$n/cni/net.d/10-portcullis.conflist" <<CNI
{
  "cniVersion": "0.4.0",
  "name": "portcullis-e2e",
  "plugins": [{
    "type": "bridge", "bridge": "$bridge", "isGateway": true, "isDefaultGateway": false,
    "ipMasq": false, "hairpinMode": true,
    "ipam": {
      "type": "host-local", "dataDir": "$n/cni/ipam",
      "ranges": [[{"subnet": "$pod_cidr", "rangeStart": "198.18.0.10", "rangeEnd": "198.18.0.250", "gateway": "$node_ip"}]],
      "routes": [{"dst": "$test_range", "gw": "$node_ip"}]
    }
  }]
}
CNI
  start containerd /usr/bin/containerd --config "$n/containerd/config.toml"
  wait_for containerd 30 ctr --address "$n/containerd.sock" version
  load_images

  local kubelet_port kubelet_healthz
  kubelet_port=$(free_port); kubelet_healthz=$(free_port)
  cat >"$n/kubelet.yaml" <<KUBELET
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $node_ip
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $kubelet_healthz
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$n/containerd.sock
failSwapOn: false
maxPods: 60
serializeImagePulls: false
evictionHard: {memory.available: 200Mi, nodefs.available: 2%, imagefs.available: 2%, nodefs.inodesFree: 2%}
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
syncFrequency: 5s
fileCheckFrequency: 5s
KUBELET
  start kubelet "$bin/kubelet" --config "$n/kubelet.yaml" --kubeconfig "$n/node.kubeconfig" \
    --root-dir "$n/kubelet" --cert-dir "$n/kubelet/pki" \
    --hostname-override "$node_name" --node-ip "$node_ip"
  wait_for kubelet 60 curl -sf "http://127.0.0.1:$kubelet_healthz/healthz"

  # kube-proxy, iptables mode. No clusterCIDR: traffic to Services keeps its source address
  # (NetworkZones and NetworkPolicy see the client). Node ports only on the node's address.
  local proxy_healthz proxy_metrics
  proxy_healthz=$(free_port); proxy_metrics=$(free_port)
  cat >"$n/kube-proxy.yaml" <<PROXY
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $n/kube-proxy.kubeconfig}
hostnameOverride: $node_name
mode: iptables
bindAddress: $node_ip
healthzBindAddress: 127.0.0.1:$proxy_healthz
metricsBindAddress: 127.0.0.1:$proxy_metrics
nodePortAddresses: ["$node_ip/32"]
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
PROXY
  start kube-proxy "$bin/kube-proxy" --config "$n/kube-proxy.yaml"
  wait_for kube-proxy 60 curl -sf "http://127.0.0.1:$proxy_healthz/healthz"

  # kube-router enforces NetworkPolicy, and nothing else.
  local router_health
  router_health=$(free_port)
  start kube-router "$bin/kube-router" --kubeconfig "$dir/kubeconfig" \
    --hostname-override "$node_name" --run-firewall=true --run-router=false \
    --run-service-proxy=false --enable-cni=false --metrics-port 0 \
    --health-port "$router_health"
  wait_for kube-router 60 curl -sf "http://127.0.0.1:$router_health/healthz"

  wait_for "node $node_name Ready" 90 "$bin/kubectl" wait --for condition=Ready \
    --timeout=2s "node/$node_name"
}

# Imports the images e2e/images/build.sh built (building them first if their inputs changed).
load_images() {
  local n="$dir/node" image archive
  while read -r image archive; do
    ctr --address "$n/containerd.sock" -n k8s.io images import "$archive" >/dev/null
    echo "cluster.sh: imported $image" >&2
  done < <(bash "$repo/e2e/images/build.sh")
}

all_running() {
  local pid name
  while read -r pid name; do
    [[ -e "/proc/$pid" ]] || return 1
  done <"$dir/pids"
}

down() {
  [[ -f "$dir/pids" ]] || { echo "cluster.sh: not up ($dir/pids missing)" >&2; return 0; }
  # Stop in reverse order of start, only the processes this script started (checked by the
  # executable path, in case a pid was reused).
  local bin pids=()
  bin="$(cat "$dir/bin" 2>/dev/null || true)"
  mapfile -t lines < <(tac "$dir/pids")
  for line in "${lines[@]}"; do
    local pid="${line%% *}" name="${line#* }"
    local exe="$bin/$name"
    [[ "$name" == containerd ]] && exe=/usr/bin/containerd
    if [[ -e "/proc/$pid" ]] && [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$exe" ]]; then
      kill "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 100); do [[ -e "/proc/$pid" ]] || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  [[ -d "$dir/node" ]] && node_down
  rm -rf "$dir"
  echo "cluster.sh: down" >&2
}

# After the daemons are stopped: the containers they left, their mounts and netns, the rules
# kube-proxy and kube-router wrote, and what node_network did.
node_down() {
  local n="$dir/node" bin
  bin="$(cat "$dir/bin" 2>/dev/null || true)"
  # Containers: runc's state under our root (`delete --force` kills a running one; the shims
  # die with their containers).
  local ns id
  for ns in "$n"/runc/*/; do
    [[ -d "$ns" ]] || continue
    for id in $(runc --root "$ns" list -q 2>/dev/null); do
      runc --root "$ns" delete --force "$id" 2>/dev/null || true
    done
  done
  pkill -f "containerd-shim-runc-v2 -namespace k8s.io .*-address $n/containerd.sock" 2>/dev/null || true
  # The kubelet's cgroups (kubepods, in every hierarchy), now empty, innermost first.
  find /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods -depth -type d -exec rmdir {} + \
    2>/dev/null || true
  # The pods' network namespaces, found by their addresses in the pod range.
  local netns
  for netns in $(ip netns list 2>/dev/null | awk '/^cni-/{print $1}' || true); do
    if ip netns exec "$netns" ip -4 addr 2>/dev/null | grep -q "inet 198\.18\.0\."; then
      ip netns delete "$netns" 2>/dev/null || true
    fi
  done
  # Every mount under the node's state, deepest first.
  local m
  for m in $(awk '{print $5}' /proc/self/mountinfo | { grep "^$n/" || true; } | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  # Rules: kube-proxy's and kube-router's own clean-ups, then any KUBE-* chain and ipset left.
  if [[ -n "$bin" ]]; then
    "$bin/kube-proxy" --cleanup >/dev/null 2>&1 || true
    "$bin/kube-router" --cleanup-config >/dev/null 2>&1 || true
  fi
  local table chain
  for table in filter nat mangle raw; do
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N KUBE-/{print $2}'); do
      iptables -t "$table" -F "$chain" 2>/dev/null || true
    done
    iptables -t "$table" -S 2>/dev/null | grep -E '^-A .*-j KUBE-' | sed 's/^-A/-D/' |
      while read -r rule; do eval "iptables -t $table $rule" 2>/dev/null || true; done || true
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N KUBE-/{print $2}'); do
      iptables -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
  local set
  for set in $(ipset list -n 2>/dev/null | { grep -E '^(KUBE-|kube-router)' || true; }); do
    ipset destroy "$set" 2>/dev/null || true
  done
  # What node_network did, undone in reverse.
  local what arg
  if [[ -f "$n/undo" ]]; then
    while read -r what arg; do
      case "$what" in
        mangle)
          local match
          for match in "${forward_drops[@]}"; do
            # shellcheck disable=SC2086
            while iptables -t mangle -D FORWARD $match -j DROP -m comment --comment portcullis-e2e \
              2>/dev/null; do :; done
          done ;;
        route) ip route del $arg 2>/dev/null || true ;;
        link) ip link del "$arg" 2>/dev/null || true ;;
      esac
    done < <(tac "$n/undo")
  fi
  [[ -f "$n/ip_forward" ]] && sysctl -qw "net.ipv4.ip_forward=$(cat "$n/ip_forward")"
  return 0
}

print_env() {
  echo "export KUBECONFIG=$dir/kubeconfig PATH=$(cat "$dir/bin"):\$PATH"
}

case "${1:-}" in
  up) up "${2:-}" ;;
  load) load_images ;;
  down) down ;;
  env) print_env ;;
  *) echo "usage: $0 up [--node]|load|down|env" >&2; exit 2 ;;
esac
