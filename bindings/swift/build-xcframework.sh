#!/usr/bin/env bash
# Builds SottoFFI.xcframework (the Rust static library for iOS devices, the
# iOS simulator and macOS, plus the generated C header and module map) next
# to Package.swift. Needs macOS with Xcode and rustup; run from anywhere.
#
#   bindings/swift/build-xcframework.sh            release build
#   PROFILE=debug bindings/swift/build-xcframework.sh
#   bindings/swift/build-xcframework.sh --release 0.1.0 https://host/releases/download
#       also zips it (SottoFFI.xcframework.zip, the asset to attach to the
#       release) and writes the asset's URL and SwiftPM checksum into the
#       root-level Package.swift, which apps add by URL.
set -euo pipefail
release_version=""; release_base=""
if [ "${1:-}" = --release ]; then
    release_version="${2:?--release VERSION BASE_URL}"
    release_base="${3:?--release VERSION BASE_URL}"
fi
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
profile="${PROFILE:-release}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

ios=aarch64-apple-ios
sims=(aarch64-apple-ios-sim x86_64-apple-ios)
macs=(aarch64-apple-darwin x86_64-apple-darwin)
rustup target add "$ios" "${sims[@]}" "${macs[@]}"

flag=(); [ "$profile" = release ] && flag=(--release)
for t in "$ios" "${sims[@]}" "${macs[@]}"; do
    (cd "$root" && cargo build --locked -p sotto-ffi --target "$t" "${flag[@]}")
done
lib() { echo "$CARGO_TARGET_DIR/$1/$profile/libsotto_ffi.a"; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/sim" "$work/mac"
lipo -create "$(lib "${sims[0]}")" "$(lib "${sims[1]}")" -output "$work/sim/libsotto_ffi.a"
lipo -create "$(lib "${macs[0]}")" "$(lib "${macs[1]}")" -output "$work/mac/libsotto_ffi.a"

rm -rf "$here/SottoFFI.xcframework"
xcodebuild -create-xcframework \
    -library "$(lib "$ios")" -headers "$here/Headers" \
    -library "$work/sim/libsotto_ffi.a" -headers "$here/Headers" \
    -library "$work/mac/libsotto_ffi.a" -headers "$here/Headers" \
    -output "$here/SottoFFI.xcframework"
echo "built $here/SottoFFI.xcframework"

if [ -n "$release_version" ]; then
    (cd "$here" && rm -f SottoFFI.xcframework.zip && ditto -c -k --keepParent SottoFFI.xcframework SottoFFI.xcframework.zip)
    sum="$(cd "$root" && swift package compute-checksum "$here/SottoFFI.xcframework.zip")"
    url="$release_base/v$release_version/SottoFFI.xcframework.zip"
    sed -i '' -e "s|url: \".*SottoFFI.xcframework.zip\"|url: \"$url\"|" \
        -e "s|checksum: \"[0-9a-f]*\"|checksum: \"$sum\"|" "$root/Package.swift"
    echo "attach $here/SottoFFI.xcframework.zip to release v$release_version; Package.swift now names $url (checksum $sum)"
fi
