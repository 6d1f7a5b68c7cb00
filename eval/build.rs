fn main() {
    genlab_build::link_libtorch();
}
