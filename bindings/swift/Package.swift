// swift-tools-version:5.9
// Sotto for iOS and macOS apps. The Swift code in Sources/Sotto is generated
// by UniFFI (scripts/gen-bindings); it calls into the Rust static library
// packaged as SottoFFI.xcframework, which build-xcframework.sh builds on a Mac
// (see README.md). Add this directory as a local package, or publish it with
// the xcframework attached to a release.
import PackageDescription

let package = Package(
    name: "Sotto",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "Sotto", targets: ["Sotto"]),
    ],
    targets: [
        // libsotto_ffi.a for each Apple platform, with Headers/SottoFFI.h and
        // Headers/module.modulemap (module `SottoFFI`).
        .binaryTarget(name: "SottoFFI", path: "SottoFFI.xcframework"),
        .target(name: "Sotto", dependencies: ["SottoFFI"], path: "Sources/Sotto"),
        .testTarget(name: "SottoTests", dependencies: ["Sotto"], path: "Tests/SottoTests"),
    ]
)
