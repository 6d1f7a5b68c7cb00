fn main() {
    genlab_build::link_libtorch();
    genlab_build::compile_cpp("genlab_shim", &["csrc/shim.cpp"]);
}
