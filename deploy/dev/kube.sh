#!/usr/bin/env bash
# A real Kubernetes API server (kube-apiserver on etcd) for the chart tests
# (helm/install_test.go). Both are built once from the Go module proxy into the
# tools cache. There is no controller-manager, scheduler or kubelet: objects are
# validated, admitted and stored, but no pod ever runs and no Job completes.
#   kube.sh build   build etcd v3.7.3 and kube-apiserver v1.37.2 unless built (~5 min cold)
#   kube.sh start   start both on 127.0.0.1 (free ports) unless the server in kube.env
#                   answers; writes kube.env (AGENTRUNNER_KUBECONFIG)
#   kube.sh stop    stop both
#   kube.sh env     print kube.env (nothing when not started)
set -euo pipefail
. "$(dirname "$0")/lib.sh"

K8S_VERSION=1.37.2
ETCD_VERSION=3.7.3
KUBE_DIR="$AGENTRUNNER_TOOLS/kube-apiserver-$K8S_VERSION"
ETCD_DIR="$AGENTRUNNER_TOOLS/etcd-$ETCD_VERSION"
APISERVER="$KUBE_DIR/kube-apiserver"
ETCD="$ETCD_DIR/etcd"
STATE="$AGENTRUNNER_RUN/kube"           # certs, keys, token file, etcd data, kubeconfig
ENVF="$AGENTRUNNER_RUN/kube.env"
ETCD_PIDF="$AGENTRUNNER_RUN/etcd.pid"; ETCD_LOG="$AGENTRUNNER_RUN/etcd.log"
API_PIDF="$AGENTRUNNER_RUN/kube-apiserver.pid"; API_LOG="$AGENTRUNNER_RUN/kube-apiserver.log"

# wrapper_module DIR MODULE VERSION: a throwaway module in DIR that requires
# MODULE@VERSION, so its main packages build with the module's own pinned
# dependencies. k8s.io/kubernetes requires its staging modules at v0.0.0 and
# replaces them with ./staging paths; the wrapper replaces each one with its
# published v0.x release instead (the list is read from the module's go.mod).
wrapper_module() {
  local dir=$1 mod=$2 ver=$3
  printf 'module agentrunner.local/devtools\n\ngo 1.26\n\nrequire %s %s\n' "$mod" "$ver" >"$dir/go.mod"
  local gomod
  gomod=$(cd "$dir" && GOFLAGS=-mod=mod go mod download -json "$mod@$ver" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
  [ -f "$gomod" ] || die "no go.mod for $mod@$ver"
  local staging_ver=$4
  if [ -n "$staging_ver" ]; then
    grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$gomod" | awk '{print $1}' | sort -u | while read -r m; do
      printf 'replace %s => %s %s\n' "$m" "$m" "$staging_ver"
    done >>"$dir/go.mod"
  fi
}

build_one() { # build_one NAME BIN MODULE VERSION STAGING_VERSION PACKAGE LDFLAGS
  local name=$1 bin=$2 mod=$3 ver=$4 staging=$5 pkg=$6 ldflags=$7
  [ -x "$bin" ] && return 0
  local dir; dir=$(dirname "$bin"); mkdir -p "$dir"
  local tmp; tmp=$(mktemp -d "$dir/.build.XXXXXX")
  say "building $name $ver into $dir"
  local t0=$SECONDS
  (
    set -e
    cd "$tmp"
    wrapper_module "$tmp" "$mod" "$ver" "$staging"
    GOFLAGS=-mod=mod go get "$pkg@$ver" >/dev/null 2>&1 || GOFLAGS=-mod=mod go get "$pkg"
    GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$tmp/out" "$pkg"
  ) || { rm -rf "$tmp"; die "building $name $ver failed"; }
  mv "$tmp/out" "$bin"
  rm -rf "$tmp"
  say "built $name in $((SECONDS - t0)) s"
}

build() {
  build_one etcd "$ETCD" go.etcd.io/etcd/server/v3 "v$ETCD_VERSION" "" \
    go.etcd.io/etcd/server/v3 "-s -w"
  local vp=k8s.io/component-base/version
  local minor=${K8S_VERSION#*.}; minor=${minor%%.*}
  build_one kube-apiserver "$APISERVER" k8s.io/kubernetes "v$K8S_VERSION" "v0.${K8S_VERSION#*.}" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    "-s -w -X $vp.gitVersion=v$K8S_VERSION -X $vp.gitMajor=1 -X $vp.gitMinor=$minor -X $vp.gitTreeState=clean"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# answers: the API server in kube.env serves /readyz to the admin token.
answers() {
  [ -f "$ENVF" ] || return 1
  local server token
  server=$(sed -n 's/^export AGENTRUNNER_KUBE_SERVER=//p' "$ENVF")
  token=$(cat "$STATE/admin.token" 2>/dev/null) || return 1
  curl -fsS -m 3 --cacert "$STATE/certs/apiserver.crt" -H "Authorization: Bearer $token" "$server/readyz" >/dev/null
}

stop_pid() {
  if pid_alive "$1"; then
    local pid; pid=$(cat "$1")
    kill "$pid"
    wait_until 30 bash -c "! kill -0 $pid" || kill -9 "$pid"
  fi
  rm -f "$1"
}

stop() {
  stop_pid "$API_PIDF"
  stop_pid "$ETCD_PIDF"
  rm -f "$ENVF"
  rm -rf "$STATE"
}

start() {
  build
  if answers; then say "kube-apiserver already answers ($(sed -n 's/^export AGENTRUNNER_KUBE_SERVER=//p' "$ENVF"))"; return 0; fi
  stop
  mkdir -p "$STATE/certs" "$STATE/etcd"; chmod 700 "$STATE"
  local etcd_port peer_port api_port
  etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port)

  say "starting etcd on 127.0.0.1:$etcd_port (log: $ETCD_LOG)"
  setsid nohup "$ETCD" --name agentrunner-dev --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "agentrunner-dev=http://127.0.0.1:$peer_port" \
    --unsafe-no-fsync --log-level warn >"$ETCD_LOG" 2>&1 </dev/null &
  echo $! >"$ETCD_PIDF"
  wait_until 30 curl -fsS -m 2 "http://127.0.0.1:$etcd_port/health" \
    || { tail -20 "$ETCD_LOG" >&2; die "etcd did not answer within 30 s"; }

  # The admin token (group system:masters) and the service-account signing key.
  (umask 077
   od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$STATE/admin.token"
   printf '%s,agentrunner-admin,agentrunner-admin,"system:masters"\n' "$(cat "$STATE/admin.token")" >"$STATE/tokens.csv"
   openssl genrsa -out "$STATE/sa.key" 2048 2>/dev/null
   openssl rsa -in "$STATE/sa.key" -pubout -out "$STATE/sa.pub" 2>/dev/null)

  say "starting kube-apiserver v$K8S_VERSION on https://127.0.0.1:$api_port (log: $API_LOG)"
  # --endpoint-reconciler-type=none: there is no node network to publish the
  # "kubernetes" Service endpoints for. The service CIDR is only bookkeeping.
  setsid nohup "$APISERVER" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --cert-dir "$STATE/certs" \
    --token-auth-file "$STATE/tokens.csv" \
    --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$STATE/sa.pub" \
    --service-account-signing-key-file "$STATE/sa.key" \
    --service-cluster-ip-range 10.96.0.0/24 \
    --endpoint-reconciler-type none \
    --enable-priority-and-fairness=false \
    --v 0 >"$API_LOG" 2>&1 </dev/null &
  echo $! >"$API_PIDF"

  local server="https://127.0.0.1:$api_port"
  cat >"$STATE/kubeconfig.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: agentrunner-dev
  cluster:
    server: $server
    certificate-authority: $STATE/certs/apiserver.crt
users:
- name: agentrunner-admin
  user:
    token: $(cat "$STATE/admin.token")
contexts:
- name: agentrunner-dev
  context: {cluster: agentrunner-dev, user: agentrunner-admin}
current-context: agentrunner-dev
EOF
  chmod 600 "$STATE/kubeconfig.tmp"; mv "$STATE/kubeconfig.tmp" "$STATE/kubeconfig"
  printf 'export AGENTRUNNER_KUBECONFIG=%s\nexport AGENTRUNNER_KUBE_SERVER=%s\n' "$STATE/kubeconfig" "$server" >"$ENVF.tmp"
  mv "$ENVF.tmp" "$ENVF"
  wait_until 120 answers || { tail -30 "$API_LOG" >&2; die "kube-apiserver did not become ready within 120 s"; }
  say "kube-apiserver answers on $server (kubeconfig: $STATE/kubeconfig)"
}

case "${1:-start}" in
  build) build ;;
  start) start ;;
  stop) stop ;;
  env) if [ -f "$ENVF" ]; then cat "$ENVF"; fi ;;
  *) die "usage: kube.sh build|start|stop|env" ;;
esac
