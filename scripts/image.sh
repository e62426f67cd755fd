#!/usr/bin/env bash
# Builds the stageTime OCI image without a container daemon and without any base image, pushes it
# to a registry on loopback, pulls it back and prints what it holds.
#
#   ./taskw image                                  # registry 127.0.0.1:5001 (started if none answers)
#   STAGETIME_REGISTRY=127.0.0.1:5999 ./taskw image
#
# The image: one layer with every service binary (static musl builds) in /usr/local/bin, the CA
# bundle for HTTPS to Git hosts, and /etc/passwd naming uid 65532; no shell. User 65532:65532,
# entrypoint stagetime-server (the chart sets each Deployment's command), OCI labels. The layer is
# reproducible: fixed owners, modes and timestamps (the commit time).
# Last line printed: `image <ref>@<digest> size=<compressed bytes> user=<uid:gid>`.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
"$root/scripts/install-tools.sh" crane >&2
crane="$root/.tools/bin/crane"
log() { printf '==> %s\n' "$*" >&2; }

target=x86_64-unknown-linux-musl
bins=(stagetime stagetime-server stagetime-creator stagetime-informer stagetime-operator stagetime-web)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
epoch=$(git log -1 --format=%ct 2>/dev/null || echo 0)
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
registry=${STAGETIME_REGISTRY:-127.0.0.1:5001}
case "$registry" in
  127.*|localhost:*) ;;
  *) echo "STAGETIME_REGISTRY must be a loopback address here, got $registry" >&2; exit 2 ;;
esac
ref="$registry/stagetime:$version"

log "building static binaries ($target, profile image)"
rustup target list --installed 2>/dev/null | grep -qx "$target" || rustup target add "$target" >&2
packages=()
for p in cli server creator informer operator web; do packages+=(-p "stagetime-$p"); done
cargo build --quiet --profile image --target "$target" "${packages[@]}" --bins
out="target/$target/image"

work="target/image-layer"
rm -rf "$work" && mkdir -p "$work"
log "assembling the layer"
python3 - "$work/layer.tar" "$epoch" "$out" /etc/ssl/certs/ca-certificates.crt "${bins[@]}" <<'PY'
import io, os, sys, tarfile
layer, epoch, out, ca, *bins = sys.argv[1:]
epoch = int(epoch)

def entry(name, kind, mode, data=b""):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, mode, epoch
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as tar:
    for d in ["etc", "etc/ssl", "etc/ssl/certs", "tmp", "usr", "usr/local", "usr/local/bin"]:
        entry(d + "/", tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755)
    entry("etc/passwd", tarfile.REGTYPE, 0o644,
          b"root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/sbin/nologin\n")
    entry("etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\nnonroot:x:65532:\n")
    with open(ca, "rb") as f:
        entry("etc/ssl/certs/ca-certificates.crt", tarfile.REGTYPE, 0o644, f.read())
    for b in bins:
        with open(os.path.join(out, b), "rb") as f:
            entry("usr/local/bin/" + b, tarfile.REGTYPE, 0o755, f.read())
PY

# A registry on loopback: reuse one that answers, else serve one for this run (blobs kept on disk
# under .tools/registry, so `./taskw up` serves the same images later).
registry_pid=""
answers() { "$crane" catalog --insecure "$registry" >/dev/null 2>&1; }
if ! answers; then
  log "starting a registry on $registry"
  mkdir -p "$root/.tools/registry"
  "$crane" registry serve --address "$registry" --disk "$root/.tools/registry" \
    >"$work/registry.log" 2>&1 &
  registry_pid=$!
  trap '[ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do
    answers && break
    kill -0 "$registry_pid" 2>/dev/null || { cat "$work/registry.log" >&2; exit 1; }
    sleep 0.1
  done
fi

log "pushing $ref"
"$crane" append --insecure --oci-empty-base -f "$work/layer.tar" -t "$ref" >/dev/null
labels=(
  --label "org.opencontainers.image.title=stagetime"
  --label "org.opencontainers.image.description=Runs Tekton PipelineRuns for a Git revision in ordered stages"
  --label "org.opencontainers.image.version=$version"
  --label "org.opencontainers.image.revision=$revision"
  --label "org.opencontainers.image.created=$created"
  --label "org.opencontainers.image.source=https://github.com/stuttgart-things/stagetime"
  --label "org.opencontainers.image.licenses=Apache-2.0"
)
digest_ref=$("$crane" mutate --insecure "$ref" -t "$ref" --set-platform linux/amd64 \
  --user 65532:65532 --workdir / --env PATH=/usr/local/bin \
  --entrypoint /usr/local/bin/stagetime-server "${labels[@]}")

log "pulling it back"
digest=$("$crane" digest --insecure "$ref")
"$crane" manifest --insecure "$ref" >"$work/manifest.json"
"$crane" config --insecure "$ref" >"$work/config.json"
python3 - "$work/manifest.json" "$work/config.json" "$work/layer.tar" <<'PY'
import json, os, sys
manifest, config = (json.load(open(p)) for p in sys.argv[1:3])
layers = manifest["layers"]
compressed = sum(l["size"] for l in layers) + manifest["config"]["size"]
c = config["config"]
print(f"  media type   {manifest.get('mediaType')}")
print(f"  platform     {config['os']}/{config['architecture']}")
print(f"  user         {c.get('User')}")
print(f"  entrypoint   {c.get('Entrypoint')}")
print(f"  layers       {len(layers)} ({compressed / 2**20:.1f} MiB compressed, "
      f"{os.path.getsize(sys.argv[3]) / 2**20:.1f} MiB uncompressed)")
for k, v in sorted(c.get("Labels", {}).items()):
    print(f"  label        {k}={v}")
PY
size=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(sum(l["size"] for l in m["layers"]) + m["config"]["size"])' "$work/manifest.json")
user=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["config"]["User"])' "$work/config.json")
[ "${digest_ref#*@}" = "$digest" ] || { echo "pushed $digest_ref but pulled $digest" >&2; exit 1; }
echo "image $registry/stagetime@$digest size=$size user=$user"
