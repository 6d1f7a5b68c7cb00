//! Workspace-level tests: the crates working together the way users chain them.
use genlab_core::train::{run, BatchSource, HarnessConfig};
use genlab_data::{Loader, LoaderConfig};
use genlab_vae::train::{load, VaeRunConfig, VaeTask};
use tch::Device;

/// A dataset converted to HDF5 feeds the loader exactly the batches the original does.
#[test]
fn converted_hdf5_yields_the_same_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let h5 = tmp.path().join("digits.h5");
    genlab_data::convert("digits", &h5).unwrap();
    let spec = h5.to_string_lossy().into_owned();
    let a = genlab_data::open("digits").unwrap();
    let b = genlab_data::open(&spec).unwrap();
    assert_eq!((a.len(), a.shape(), a.num_classes()), (b.len(), b.shape(), b.num_classes()));
    let mut la = Loader::new(a, LoaderConfig::new(32, 9, Device::Cpu)).unwrap();
    let mut lb = Loader::new(b, LoaderConfig::new(32, 9, Device::Cpu)).unwrap();
    la.seek(100).unwrap();
    lb.seek(100).unwrap();
    for _ in 0..3 {
        let (x, y) = (la.next_batch().unwrap(), lb.next_batch().unwrap());
        assert!(x.images.equal(&y.images));
        assert!(x.labels.unwrap().equal(&y.labels.unwrap()));
    }
}

/// Train a VAE on the HDF5 copy, sample to HDF5, and read the samples back as a dataset.
#[test]
fn train_on_hdf5_then_samples_read_back_as_a_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let h5 = tmp.path().join("digits.h5");
    genlab_data::convert("digits", &h5).unwrap();
    let spec = h5.to_string_lossy().into_owned();
    let ds = genlab_data::open(&spec).unwrap();
    let [c, h, w] = ds.shape();
    let run_cfg = VaeRunConfig::from_preset("mlp", [c as i64, h as i64, w as i64], ds.num_classes(), &spec).unwrap();
    let mut loader = Loader::new(ds, LoaderConfig::new(64, 0, Device::Cpu)).unwrap();
    let mut task = VaeTask::new(run_cfg, Device::Cpu).unwrap();
    let out = tmp.path().join("run");
    let cfg = HarnessConfig { progress: false, sample_every: 0, ..HarnessConfig::new(&out, 30) };
    run(&mut task, &mut loader, &cfg).unwrap();

    let (_vs, model, _) = load(&out, Device::Cpu).unwrap();
    let samples = genlab_vae::sample::sample_prior(&model, 12, None).unwrap();
    let path = tmp.path().join("samples.h5");
    genlab_core::images::save_samples(&samples, &path, None).unwrap();
    let back = genlab_data::open(&path.to_string_lossy()).unwrap();
    assert_eq!((back.len(), back.shape()), (12, [1, 8, 8]));
    let first = back.get(0).unwrap().image;
    let want = genlab_core::images::to_u8(&samples.get(0).unsqueeze(0)).view(-1);
    assert_eq!(first, Vec::<u8>::try_from(want).unwrap());
}
