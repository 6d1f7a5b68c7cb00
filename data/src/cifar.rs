//! CIFAR-10's binary version (Krizhevsky 2009, "Learning Multiple Layers of Features from
//! Tiny Images"; <https://www.cs.toronto.edu/~kriz/cifar.html>): `data_batch_1.bin` ..
//! `data_batch_5.bin` (training) and `test_batch.bin`, each a run of 3073-byte records:
//! one label byte (0-9), then 1024 red, 1024 green and 1024 blue bytes of a 32x32 image,
//! row-major — already `C x H x W`. Class names come from `batches.meta.txt` when present.
use crate::dataset::InMemory;
use crate::error::{DataError, Result};
use std::path::{Path, PathBuf};

pub const RECORD: usize = 1 + 3 * 32 * 32;
pub const CLASSES: usize = 10;

/// Split CIFAR-10 records into (pixels, labels); errors give the byte offset.
pub fn parse_cifar10(bytes: &[u8]) -> std::result::Result<(Vec<u8>, Vec<i64>), String> {
    if bytes.is_empty() {
        return Err("empty file: expected 3073-byte records".into());
    }
    if bytes.len() % RECORD != 0 {
        let at = bytes.len() - bytes.len() % RECORD;
        return Err(format!(
            "{} bytes is not a whole number of 3073-byte records: the record at offset {at} has only {} bytes",
            bytes.len(),
            bytes.len() - at
        ));
    }
    let n = bytes.len() / RECORD;
    let mut pixels = Vec::with_capacity(n * (RECORD - 1));
    let mut labels = Vec::with_capacity(n);
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        if rec[0] as usize >= CLASSES {
            return Err(format!("label {} at offset {} (record {i}) is not in 0..10", rec[0], i * RECORD));
        }
        labels.push(rec[0] as i64);
        pixels.extend_from_slice(&rec[1..]);
    }
    Ok((pixels, labels))
}

/// The folder holding the batches: `dir` itself or its `cifar-10-batches-bin`.
fn batches_dir(dir: &Path) -> PathBuf {
    let inner = dir.join("cifar-10-batches-bin");
    if inner.is_dir() {
        inner
    } else {
        dir.to_path_buf()
    }
}

/// Read CIFAR-10's training (`test = false`, 50,000 images) or test batches from `dir`.
pub fn read_cifar10(dir: &Path, test: bool) -> Result<InMemory> {
    let dir = batches_dir(dir);
    let names: Vec<String> =
        if test { vec!["test_batch.bin".into()] } else { (1..=5).map(|k| format!("data_batch_{k}.bin")).collect() };
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for name in names {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
        let (p, l) = parse_cifar10(&bytes).map_err(|m| DataError::format(&path, m))?;
        pixels.extend(p);
        labels.extend(l);
    }
    let name = format!("cifar10{}:{}", if test { "-test" } else { "" }, dir.display());
    let ds = InMemory::new(name, [3, 32, 32], pixels, Some(labels))?;
    let meta = dir.join("batches.meta.txt");
    match std::fs::read_to_string(&meta) {
        Ok(text) => {
            let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
            if names.len() != CLASSES {
                return Err(DataError::format(&meta, format!("{} class names, expected {CLASSES}", names.len())));
            }
            ds.with_class_names(names)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            ds.with_class_names((0..CLASSES).map(|k| k.to_string()).collect())
        }
        Err(e) => Err(DataError::io(&meta, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Dataset;
    use proptest::prelude::{any, proptest};

    fn records(labels: &[u8]) -> Vec<u8> {
        labels
            .iter()
            .flat_map(|&l| std::iter::once(l).chain((0..RECORD - 1).map(move |i| (i % 251) as u8 ^ l)))
            .collect()
    }

    #[test]
    fn reads_train_and_test_batches() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("cifar-10-batches-bin");
        std::fs::create_dir_all(&inner).unwrap();
        for k in 1..=5 {
            std::fs::write(inner.join(format!("data_batch_{k}.bin")), records(&[k, 9])).unwrap();
        }
        std::fs::write(inner.join("test_batch.bin"), records(&[3])).unwrap();
        let train = read_cifar10(dir.path(), false).unwrap();
        assert_eq!((train.len(), train.shape(), train.num_classes()), (10, [3, 32, 32], Some(10)));
        let it = train.get(2).unwrap();
        assert_eq!((it.label, it.image[0], it.image[5]), (Some(2), 2, 5 ^ 2));
        let test = read_cifar10(&inner, true).unwrap();
        assert_eq!((test.len(), test.get(0).unwrap().label), (1, Some(3)));
        assert_eq!(test.class_names().unwrap()[3], "3");
        let meta = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n";
        std::fs::write(inner.join("batches.meta.txt"), meta).unwrap();
        assert_eq!(read_cifar10(&inner, true).unwrap().class_names().unwrap()[3], "cat");
    }

    #[test]
    fn wrong_sizes_and_labels_give_offsets() {
        let mut b = records(&[1, 2]);
        b.truncate(RECORD + 100);
        assert!(parse_cifar10(&b).unwrap_err().contains("offset 3073 has only 100 bytes"));
        let mut b = records(&[1, 2]);
        b[RECORD] = 10;
        assert!(parse_cifar10(&b).unwrap_err().contains("label 10 at offset 3073"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("test_batch.bin"), &b[..10]).unwrap();
        let e = read_cifar10(dir.path(), true).unwrap_err().to_string();
        assert!(e.contains("test_batch.bin") && e.contains("offset 0"), "{e}");
        let e = read_cifar10(dir.path(), false).unwrap_err().to_string();
        assert!(e.contains("data_batch_1.bin"), "{e}");
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..8000)) {
            let _ = parse_cifar10(&bytes);
        }
    }
}
