//! The dataset classifier learns `digits`: held-out accuracy past a stated bound after a short run,
//! and its features separate real images from corrupted ones.
use genlab_core::train::{run, HarnessConfig};
use genlab_data::{Dataset, Loader, LoaderConfig, Subset};
use genlab_eval::classifier::{accuracy, load, ClassifierRunConfig, ClassifierTask};
use genlab_eval::features::embed_all;
use genlab_eval::frechet_distance;
use std::sync::Arc;
use tch::Device;

/// 300 steps of 64 on 1400 of the 1797 digits (about 15 s on one core): more than 90 % right on the
/// other 397, and the real train-vs-held-out Fréchet distance on its features is far below that of
/// held-out images against the same images with their pixels shuffled.
#[test]
fn classifier_learns_digits() {
    tch::set_num_threads(1);
    let all = genlab_data::open("digits").unwrap();
    let train: Arc<dyn Dataset> = Arc::new(Subset::new(all.clone(), (0..1400).collect(), "train").unwrap());
    let test = Subset::new(all.clone(), (1400..all.len()).collect(), "held out").unwrap();
    let mut cfg = ClassifierRunConfig::from_preset("small", [1, 8, 8], all.num_classes(), "digits", 300).unwrap();
    cfg.batch_size = 64;
    let mut loader = Loader::new(train, LoaderConfig::new(64, 0, Device::Cpu)).unwrap();
    genlab_core::seed::manual_seed(0);
    let mut task = ClassifierTask::new(cfg, Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("clf");
    let harness =
        HarnessConfig { progress: false, sample_every: 0, checkpoint_every: 0, ..HarnessConfig::new(&out, 300) };
    run(&mut task, &mut loader, &harness).unwrap();

    let clf = load(&out, Device::Cpu).unwrap();
    let acc = accuracy(&clf.model, &test, 128).unwrap();
    assert_eq!(acc.total, 397);
    assert!(acc.accuracy > 0.9, "held-out accuracy {}", acc.accuracy);

    let idx: Vec<usize> = (0..397).collect();
    let (held_out, _) = genlab_data::batch_of(&test, &idx).unwrap();
    let (train_imgs, _) = genlab_data::batch_of(all.as_ref(), &(0..397).collect::<Vec<_>>()).unwrap();
    let perm = tch::Tensor::randperm(64, (tch::Kind::Int64, Device::Cpu));
    let shuffled = held_out.view([397, 64]).index_select(1, &perm).view([397, 1, 8, 8]);
    let f = |x: &tch::Tensor| embed_all(&clf, x, 100).unwrap().features;
    let real = frechet_distance(&f(&train_imgs), &f(&held_out)).unwrap();
    let corrupt = frechet_distance(&f(&shuffled), &f(&held_out)).unwrap();
    assert!(corrupt > 5.0 * real, "FD real {real} vs shuffled pixels {corrupt}");
}
