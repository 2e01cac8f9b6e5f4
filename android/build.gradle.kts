// Android library module: the generated uniffi Kotlin bindings + SetblockEngine (Flow/StateFlow),
// with libsetblock_ffi.so and libonnxruntime.so per ABI in src/main/jniLibs (build-rust.sh).
plugins {
    id("com.android.library")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "dev.setblock.android"
    compileSdk = 35
    defaultConfig {
        minSdk = 26
        ndk { abiFilters += listOf("arm64-v8a", "x86_64") }
        consumerProguardFiles("consumer-rules.pro")
    }
    sourceSets["main"].kotlin.srcDirs("src/main/kotlin", "build/generated/uniffi")
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions { jvmTarget = "17" }
}

dependencies {
    implementation("net.java.dev.jna:jna:5.13.0@aar")
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.10.2")
}

// Cross-compile the Rust library and generate the bindings before Kotlin compiles.
val buildRust by tasks.registering(Exec::class) {
    commandLine("bash", "${projectDir}/build-rust.sh")
}
tasks.named("preBuild") { dependsOn(buildRust) }
