//! Compiles engine/csrc (the libtorch calls tch does not bind: packed causal attention through
//! FlashAttention-2, and libtorch's profiler for kernel traces) against the libtorch that
//! torch-sys found. torch-sys passes its library folder to the crates that depend on it as
//! DEP_TCH_LIBTORCH_LIB; the headers sit beside it.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=csrc/flash_varlen.cpp");
    println!("cargo:rerun-if-changed=csrc/kernel_trace.cpp");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let lib = match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(lib) => PathBuf::from(lib),
        Err(_) => panic!("torch-sys did not say where libtorch is (DEP_TCH_LIBTORCH_LIB unset)"),
    };
    let include = lib.parent().unwrap_or(&lib).join("include");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("csrc/flash_varlen.cpp")
        .file("csrc/kernel_trace.cpp")
        .compile("pspace_csrc");
}
