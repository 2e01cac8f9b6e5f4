// swift-tools-version:5.9
// setblock for iOS/macOS: the uniffi-generated Swift bindings (Sources/Setblock, made by
// build-xcframework.sh) over SetblockFFI.xcframework, plus SetblockEngine (AsyncThrowingStream).
import PackageDescription

let package = Package(
    name: "Setblock",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "Setblock", targets: ["Setblock", "SetblockEngine"]),
    ],
    targets: [
        .binaryTarget(name: "SetblockFFI", path: "SetblockFFI.xcframework"),
        .target(name: "Setblock", dependencies: ["SetblockFFI"], path: "Sources/Setblock"),
        .target(name: "SetblockEngine", dependencies: ["Setblock"], path: "Sources/SetblockEngine"),
    ]
)
