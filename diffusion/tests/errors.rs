//! Errors raised inside core's training harness keep their crate's type and variant.
use genlab_core::train::{run, HarnessConfig};
use genlab_data::{Loader, LoaderConfig};
use genlab_diffusion::train::{DiffusionRunConfig, DiffusionTask};
use genlab_diffusion::DiffusionError;
use tch::Device;

/// An error raised inside a training step comes out of core's harness with its type and variant: a
/// class-conditional run on images without labels fails with `DiffusionError::Labels`, not a string.
#[test]
fn a_step_error_keeps_its_variant_through_the_harness() {
    let cfg =
        DiffusionRunConfig::from_preset("unet-tiny", [1, 8, 8], Some(10), Default::default(), "unlabelled").unwrap();
    let mut task = DiffusionTask::new(cfg, Device::Cpu).unwrap();
    let images = genlab_data::InMemory::new("unlabelled", [1, 8, 8], vec![0u8; 64 * 64], None).unwrap();
    let mut loader = Loader::new(std::sync::Arc::new(images), LoaderConfig::new(16, 0, Device::Cpu)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let err = run(
        &mut task,
        &mut loader,
        &HarnessConfig { progress: false, sample_every: 0, checkpoint_every: 0, ..HarnessConfig::new(tmp.path(), 2) },
    )
    .unwrap_err();
    match err.downcast_ref::<DiffusionError>() {
        Some(DiffusionError::Labels(msg)) => assert!(msg.contains("`unlabelled` has no labels"), "{msg}"),
        other => panic!("expected DiffusionError::Labels, got {other:?} from {err}"),
    }
    assert!(err.to_string().contains("class-conditional"), "{err}");
}
