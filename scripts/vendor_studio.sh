#!/usr/bin/env bash
# Refreshes the studio's vendored browser libraries from the npm registry (no CDN at run time, no build step):
# `npm pack` fetches each pinned tarball (npm checks its registry integrity), one prebuilt file and the licence are
# copied into api/studio_static/vendor/, and vendor.lock.json records version, tarball integrity, file sha256 and
# licence. `--latest` takes the registry's current versions (`npm view`): review the diff, then set the pins below.
# Usage: bash scripts/vendor_studio.sh [--latest]
set -euo pipefail
cd "$(dirname "$0")/.."
out=api/studio_static/vendor
lock=$out/vendor.lock.json
# package | pinned version | file inside the tarball | vendored name
packages=(
  "wavesurfer.js|8.0.1|package/dist/wavesurfer.esm.js|wavesurfer.esm.js"
  "@supabase/supabase-js|2.119.1|package/dist/umd/supabase.js|supabase.umd.js"
  "tus-js-client|4.3.1|package/dist/tus.min.js|tus.min.js"
)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
entries=()
for spec in "${packages[@]}"; do
  IFS='|' read -r name version file target <<<"$spec"
  if [ "${1:-}" = "--latest" ]; then
    version=$(npm view "$name" version)
  fi
  tarball=$(cd "$work" && npm pack --silent "$name@$version" | tail -n 1)
  mkdir -p "$work/$target.d"
  tar -xzf "$work/$tarball" -C "$work/$target.d"
  cp "$work/$target.d/$file" "$out/$target"
  cp "$work/$target.d/package/LICENSE" "$out/$target.LICENSE"
  licence=$(node -p "require('$work/$target.d/package/package.json').license")
  integrity=$(npm view "$name@$version" dist.integrity)
  sha=$(sha256sum "$out/$target" | cut -d' ' -f1)
  entries+=("{\"package\":\"$name\",\"version\":\"$version\",\"file\":\"$target\",\"from\":\"$file\",\"sha256\":\"$sha\",\"licence\":\"$licence\",\"licence_file\":\"$target.LICENSE\",\"tarball_integrity\":\"$integrity\"}")
done
(IFS=','; echo "[${entries[*]}]") | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.stringify(JSON.parse(s),null,2)))' >"$lock"
echo "vendored into $out:"; cat "$lock"
