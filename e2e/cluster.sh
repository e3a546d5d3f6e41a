#!/usr/bin/env bash
# A real, local Kubernetes control plane for tests and the demo: etcd, kube-apiserver and
# kube-controller-manager on loopback, built from pinned Go modules (e2e/controlplane).
#
#   e2e/cluster.sh up     builds what is missing, starts the three daemons, installs crds/,
#                         and prints `export KUBECONFIG=...`
#   e2e/cluster.sh down   stops exactly the processes `up` started, and removes the state
#   e2e/cluster.sh env    prints the export line again
#
# There is no kubelet and no scheduler: Deployments get ReplicaSets and Pods objects, and the
# garbage collector works, but no container runs. e2e/podemu.py runs a gateway pod's container
# as a local process instead (see docs/kubernetes.md).
#
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

  local etcd_port etcd_peer api_port kcm_port
  etcd_port=$(free_port); etcd_peer=$(free_port); api_port=$(free_port); kcm_port=$(free_port)

  # A CA, the apiserver's serving certificate for 127.0.0.1/localhost, and the service
  # account signing key. The admin credential is a client certificate (system:masters).
  local pki="$dir/pki"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=portcullis-e2e-ca" -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' >"$pki/apiserver.ext"
  openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -CAcreateserial -days 30 -extfile "$pki/apiserver.ext" -out "$pki/apiserver.crt" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/O=system:masters/CN=admin" -keyout "$pki/admin.key" -out "$pki/admin.csr" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' >"$pki/admin.ext"
  openssl x509 -req -in "$pki/admin.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -CAcreateserial -days 30 -extfile "$pki/admin.ext" -out "$pki/admin.crt" 2>/dev/null
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null

  cat >"$dir/kubeconfig" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: portcullis-e2e
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $pki/ca.crt
users:
- name: admin
  user:
    client-certificate: $pki/admin.crt
    client-key: $pki/admin.key
contexts:
- name: portcullis-e2e
  context: {cluster: portcullis-e2e, user: admin, namespace: default}
current-context: portcullis-e2e
KCFG

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
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --service-account-key-file "$pki/sa.pub" \
    --service-account-signing-key-file "$pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc \
    --authorization-mode Node,RBAC \
    --service-cluster-ip-range 10.96.0.0/16 \
    --allow-privileged=false --profiling=false
  wait_for kube-apiserver 90 curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" \
    --key "$pki/admin.key" "https://127.0.0.1:$api_port/readyz"

  start kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$dir/kubeconfig" \
    --authentication-kubeconfig "$dir/kubeconfig" --authorization-kubeconfig "$dir/kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$kcm_port" \
    --leader-elect=false --use-service-account-credentials=false \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
    --controllers '*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller,-persistentvolume-binder,-attachdetach'
  wait_for kube-controller-manager 60 curl -skf "https://127.0.0.1:$kcm_port/healthz"

  export KUBECONFIG="$dir/kubeconfig"
  wait_for "the default namespace" 30 "$bin/kubectl" get namespace default
  "$bin/kubectl" apply --server-side --field-manager=cluster.sh -f "$repo/crds/" >&2
  "$bin/kubectl" wait --for condition=established --timeout=60s -f "$repo/crds/" >&2
  print_env
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
    if [[ -e "/proc/$pid" ]] && [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$bin/$name" ]]; then
      kill "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 100); do [[ -e "/proc/$pid" ]] || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$dir"
  echo "cluster.sh: down" >&2
}

print_env() {
  echo "export KUBECONFIG=$dir/kubeconfig PATH=$(cat "$dir/bin"):\$PATH"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) print_env ;;
  *) echo "usage: $0 up|down|env" >&2; exit 2 ;;
esac
