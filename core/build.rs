use genlab_build::CppOptions;

fn main() {
    genlab_build::link_libtorch();
    genlab_build::compile_cpp("genlab_shim", &["csrc/shim.cpp"]);
    // c10d: Gloo always (its headers come from the system's libgloo-dev, its code is inside
    // libtorch_cpu); NCCL with the `nccl` feature, given the CUDA headers in
    // GENLAB_CUDA_INCLUDE (a `:`-separated list) and a libtorch built with CUDA.
    let mut opts = CppOptions { std: "c++20", defines: vec!["USE_C10D_GLOO".into()], includes: Vec::new() };
    println!("cargo:rerun-if-env-changed=GENLAB_CUDA_INCLUDE");
    if std::env::var_os("CARGO_FEATURE_NCCL").is_some() {
        let cuda_lib = genlab_build::libtorch_lib_dir().map(|l| l.join("libtorch_cuda.so"));
        if !cuda_lib.is_some_and(|l| l.exists()) {
            panic!("feature `nccl`: this libtorch has no libtorch_cuda.so (a CPU-only build)");
        }
        let Some(inc) = std::env::var_os("GENLAB_CUDA_INCLUDE") else {
            panic!("feature `nccl`: set GENLAB_CUDA_INCLUDE to the CUDA runtime, crt, cccl and NCCL include dirs");
        };
        opts.includes.extend(std::env::split_paths(&inc));
        opts.defines.extend(["USE_C10D_NCCL".into(), "USE_CUDA".into(), "GENLAB_NCCL".into()]);
    }
    genlab_build::compile_cpp_with("genlab_dist", &["csrc/dist.cpp"], &opts);
}
