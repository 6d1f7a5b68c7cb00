//! Build-script helpers for every genlab package that links libtorch into a binary
//! (the CLI, and the unit/integration test binaries of every crate).
//!
//! Two problems they fix, both invisible until a user runs a binary:
//! - torch-sys links libtorch without an rpath, so binaries only start with
//!   LD_LIBRARY_PATH set. We add `-rpath <libtorch lib dir>`.
//! - rustc links with `--as-needed`; nothing references libtorch_cuda.so directly,
//!   so the linker drops it and CUDA is then reported "not available" on a GPU machine.
//!   We force it in with `--no-as-needed` when the libtorch build ships it.
//!
//! torch-sys exports its library directory to the build scripts of packages that depend
//! on it directly, as `DEP_TCH_LIBTORCH_LIB`; each such package lists `torch-sys`.
use std::path::PathBuf;

/// The libtorch library directory torch-sys built against, canonicalised
/// (so binaries keep working if the project's `.libtorch` link is re-pointed).
pub fn libtorch_lib_dir() -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib = PathBuf::from(std::env::var_os("DEP_TCH_LIBTORCH_LIB")?);
    Some(std::fs::canonicalize(&lib).unwrap_or(lib))
}

/// Emit the rpath and libtorch_cuda link arguments for every binary of the package.
pub fn link_libtorch() {
    let Some(lib) = libtorch_lib_dir() else {
        println!("cargo:warning=torch-sys exported no libtorch lib dir; binaries will need LD_LIBRARY_PATH");
        return;
    };
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" || os == "macos" {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
    if os == "linux" && lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    println!("cargo:rustc-env=GENLAB_LIBTORCH_LIB={}", lib.display());
}

/// Compile C++ sources against libtorch's headers (for the few libtorch entry points
/// tch does not bind, such as autocast's dtype and device selection).
pub fn compile_cpp(name: &str, files: &[&str]) {
    compile_cpp_with(name, files, &CppOptions::default());
}

/// Language standard, defines and include directories beyond libtorch's own.
#[derive(Debug, Clone)]
pub struct CppOptions {
    /// `c++17`, `c++20`, ...
    pub std: &'static str,
    /// `NAME` or `NAME=VALUE`, passed as `-D`.
    pub defines: Vec<String>,
    pub includes: Vec<PathBuf>,
}

impl Default for CppOptions {
    fn default() -> Self {
        CppOptions { std: "c++17", defines: Vec::new(), includes: Vec::new() }
    }
}

/// [`compile_cpp`] with a chosen standard, extra defines and include directories
/// (the c10d shim needs C++20, `USE_C10D_GLOO` and Gloo's headers).
pub fn compile_cpp_with(name: &str, files: &[&str], opts: &CppOptions) {
    let Some(lib) = libtorch_lib_dir() else {
        panic!("torch-sys exported no libtorch lib dir (DEP_TCH_LIBTORCH_LIB); cannot build {name}");
    };
    let root = lib.parent().map(PathBuf::from).unwrap_or_default();
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag(format!("-std={}", opts.std))
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT");
    for d in &opts.defines {
        build.flag(format!("-D{d}"));
    }
    for i in &opts.includes {
        build.include(i);
    }
    for f in files {
        println!("cargo:rerun-if-changed={f}");
        build.file(f);
    }
    build.compile(name);
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}
