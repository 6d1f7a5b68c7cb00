//! `augment`: N samples per class with their labels, in the HDF5 layout genlab-data reads back;
//! clear errors for an unconditional generator, N = 0 and classes the model does not have.
use genlab_data::Dataset;
use genlab_gan::augment::augment;
use genlab_gan::model::{GanConfig, Generator};
use tch::{nn::VarStore, Device};

/// libtorch's random generator is global: tests that seed it or draw from it take turns.
fn rng() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn generator(vs: &VarStore, num_classes: Option<i64>) -> Generator {
    let cfg = GanConfig { g_width: 8, latent_dim: 16, num_classes, ..GanConfig::for_images([1, 8, 8]) };
    Generator::new(vs.root(), cfg).unwrap()
}

fn read_all(path: &std::path::Path) -> (std::sync::Arc<dyn Dataset>, Vec<i64>, Vec<Vec<u8>>) {
    let ds = genlab_data::open(&path.display().to_string()).unwrap();
    let items: Vec<_> = (0..ds.len()).map(|i| ds.get(i).unwrap()).collect();
    let labels = items.iter().map(|it| it.label.unwrap()).collect();
    let images = items.into_iter().map(|it| it.image).collect();
    (ds, labels, images)
}

#[test]
fn writes_n_per_class_and_reads_back_labelled() {
    let _rng = rng();
    tch::manual_seed(0);
    let tmp = tempfile::tempdir().unwrap();
    let vs = VarStore::new(Device::Cpu);
    let g = generator(&vs, Some(10));
    let out = tmp.path().join("aug.h5");
    tch::manual_seed(7);
    let s = augment(&g, 3, None, &out, 7).unwrap();
    assert_eq!((s.images, s.per_class, s.classes.len(), s.image_shape), (30, 3, 10, [1, 8, 8]));
    let (ds, labels, images) = read_all(&out);
    assert_eq!((ds.len(), ds.shape(), ds.num_classes()), (30, [1, 8, 8], Some(10)));
    let want: Vec<i64> = (0..10).flat_map(|c| [c; 3]).collect();
    assert_eq!(labels, want);
    // Samples differ from each other, and the same seed gives the same file.
    assert_ne!(images[0], images[1]);
    tch::manual_seed(7);
    augment(&g, 3, None, &tmp.path().join("again.h5"), 7).unwrap();
    assert_eq!(read_all(&tmp.path().join("again.h5")).2, images);
    // A subset of classes, in the order given.
    augment(&g, 2, Some(&[7, 2]), &tmp.path().join("some.h5"), 64).unwrap();
    let (ds, labels, _) = read_all(&tmp.path().join("some.h5"));
    assert_eq!((ds.len(), labels), (4, vec![7, 7, 2, 2]));
}

#[test]
fn bad_requests_are_clear_errors() {
    let _rng = rng();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.h5");
    let vs = VarStore::new(Device::Cpu);
    let unconditional = generator(&vs, None);
    let e = augment(&unconditional, 3, None, &out, 8).unwrap_err().to_string();
    assert!(e.contains("class-conditional") && e.contains("--model cgan"), "{e}");
    let vs = VarStore::new(Device::Cpu);
    let g = generator(&vs, Some(10));
    let e = augment(&g, 0, None, &out, 8).unwrap_err().to_string();
    assert!(e.contains("at least 1, got 0"), "{e}");
    let e = augment(&g, 2, Some(&[3, 12]), &out, 8).unwrap_err().to_string();
    assert!(e.contains("class 12 does not exist") && e.contains("10 classes"), "{e}");
    assert!(augment(&g, 2, Some(&[]), &out, 8).unwrap_err().to_string().contains("empty"));
    assert!(!out.exists(), "nothing is written on a bad request");
}
