//! A deterministic, sharded, prefetching batch loader.
//!
//! The batch for training step `s` depends only on `(seed, s)`: epoch `e = s / B` (with
//! `B` batches per epoch and rank) is a permutation of all indices drawn from
//! `(seed, e)`, cut into global batches of `world_size * batch_size`; rank `r` takes the
//! `r`-th slice of global batch `s % B` (every index at most once per epoch across ranks,
//! the remainder dropped so ranks stay in step). So `N` ranks of batch `b` train on
//! exactly the images one process of batch `N * b` would, and a one-process run is
//! unchanged by sharding. Without an explicit rank, [`LoaderConfig::new`] takes the rank
//! and world size of the default process group ([`genlab_core::dist`]), as PyTorch's
//! `DistributedSampler` does. A background thread decodes batches ahead of the training step
//! (items in parallel with rayon); `seek` restarts it at any step, which is what makes
//! `--resume` exact.
use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use genlab_core::seed::Rng;
use genlab_core::train::{Batch, BatchSource};
use rayon::prelude::*;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub seed: u64,
    pub shuffle: bool,
    /// Drop the last incomplete batch of each epoch (always true when sharding).
    pub drop_last: bool,
    pub rank: usize,
    pub world_size: usize,
    pub device: Device,
    /// Random horizontal flips (seeded per step).
    pub hflip: bool,
    /// Batches decoded ahead of the training step.
    pub prefetch: usize,
}

impl LoaderConfig {
    /// A loader for this process's shard: rank and world size come from the default
    /// process group, `(0, 1)` without one.
    pub fn new(batch_size: usize, seed: u64, device: Device) -> Self {
        let (rank, world_size) = genlab_core::dist::rank_and_world();
        LoaderConfig {
            batch_size,
            seed,
            shuffle: true,
            drop_last: true,
            rank,
            world_size,
            device,
            hflip: false,
            prefetch: 4,
        }
    }
}

/// Decoded batch on the host: `batch * C * H * W` bytes, labels, flip flags.
struct HostBatch {
    pixels: Vec<u8>,
    labels: Option<Vec<i64>>,
    n: usize,
}

/// The indices of batch `step` for this rank (see the module docs).
pub fn batch_indices(len: usize, cfg: &LoaderConfig, step: u64) -> Vec<usize> {
    let world = cfg.world_size.max(1);
    let bs = cfg.batch_size.max(1);
    let per_epoch = batches_per_epoch(len, cfg).max(1) as u64;
    let epoch = step / per_epoch;
    let b = (step % per_epoch) as usize;
    let order = if cfg.shuffle { Rng::derive(cfg.seed, &[epoch]).permutation(len) } else { (0..len).collect() };
    // Global batch `b` is `order[b*G..(b+1)*G]` with `G = world * bs`; rank `r` takes its
    // `r`-th slice, so `world` ranks of `bs` see what one process of batch `G` sees.
    let start = (b * bs * world + cfg.rank * bs).min(len);
    order[start..(start + bs).min(len)].to_vec()
}

/// Batches per epoch for one rank.
pub fn batches_per_epoch(len: usize, cfg: &LoaderConfig) -> usize {
    let world = cfg.world_size.max(1);
    let bs = cfg.batch_size.max(1);
    if cfg.drop_last || world > 1 {
        len / (world * bs)
    } else {
        len.div_ceil(bs)
    }
}

fn decode(ds: &dyn Dataset, idx: &[usize]) -> Result<HostBatch> {
    let items: Vec<_> = idx.par_iter().map(|&i| ds.get(i)).collect::<Result<Vec<_>>>()?;
    let mut pixels = Vec::with_capacity(items.iter().map(|i| i.image.len()).sum());
    let has_labels = items.first().map(|i| i.label.is_some()).unwrap_or(false);
    let mut labels = has_labels.then(Vec::new);
    for it in &items {
        pixels.extend_from_slice(&it.image);
        if let (Some(l), Some(v)) = (labels.as_mut(), it.label) {
            l.push(v);
        }
    }
    Ok(HostBatch { pixels, labels, n: items.len() })
}

pub struct Loader {
    dataset: Arc<dyn Dataset>,
    cfg: LoaderConfig,
    next_step: u64,
    rx: Option<Receiver<(u64, Result<HostBatch>)>>,
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader").field("dataset", &self.dataset.describe()).field("cfg", &self.cfg).finish()
    }
}

impl Loader {
    pub fn new(dataset: Arc<dyn Dataset>, cfg: LoaderConfig) -> Result<Self> {
        if cfg.batch_size == 0 {
            return Err(DataError::Invalid("batch size must be at least 1".into()));
        }
        if cfg.world_size == 0 || cfg.rank >= cfg.world_size {
            return Err(DataError::Invalid(format!("rank {} is not below world size {}", cfg.rank, cfg.world_size)));
        }
        if dataset.len() < cfg.batch_size * cfg.world_size {
            return Err(DataError::Invalid(format!(
                "{}: {} items cannot fill one batch of {}{}",
                dataset.describe(),
                dataset.len(),
                cfg.batch_size,
                if cfg.world_size > 1 { format!(" on each of {} ranks", cfg.world_size) } else { String::new() }
            )));
        }
        Ok(Loader { dataset, cfg, next_step: 0, rx: None, worker: None })
    }

    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.dataset
    }

    fn start(&mut self) {
        self.stop();
        let (tx, rx) = sync_channel(self.cfg.prefetch.max(1));
        let ds = Arc::clone(&self.dataset);
        let cfg = self.cfg.clone();
        let first = self.next_step;
        self.worker = Some(std::thread::spawn(move || {
            let mut step = first;
            loop {
                let idx = batch_indices(ds.len(), &cfg, step);
                let b = decode(ds.as_ref(), &idx);
                if tx.send((step, b)).is_err() {
                    return;
                }
                step += 1;
            }
        }));
        self.rx = Some(rx);
    }

    fn stop(&mut self) {
        // Dropping the receiver makes the worker's next send fail, ending it.
        self.rx = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }

    fn to_batch(&self, hb: HostBatch, step: u64) -> Result<Batch> {
        let [c, h, w] = self.dataset.shape();
        let t = Tensor::from_slice(&hb.pixels).view([hb.n as i64, c as i64, h as i64, w as i64]);
        let mut images = t.to_kind(Kind::Float) / 127.5 - 1.0;
        if self.cfg.hflip {
            // Draw the flips of the whole global batch and keep this rank's slice, so that
            // sharding does not change which images are flipped.
            let mut rng = Rng::derive(self.cfg.seed, &[step, 0x_f11b]);
            let skip = self.cfg.rank * self.cfg.batch_size;
            let flips: Vec<bool> = (0..skip + hb.n).map(|_| rng.next_u64() & 1 == 1).skip(skip).collect();
            let mask = Tensor::from_slice(&flips).view([hb.n as i64, 1, 1, 1]);
            images = images.flip([3]).where_self(&mask, &images);
        }
        let pinned = matches!(self.cfg.device, Device::Cuda(_));
        let images = if pinned {
            images.pin_memory(self.cfg.device).to_device(self.cfg.device)
        } else {
            images.to_device(self.cfg.device)
        };
        let labels = hb.labels.map(|l| Tensor::from_slice(&l).to_device(self.cfg.device));
        Ok(Batch { images, labels })
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop();
    }
}

impl BatchSource for Loader {
    fn seek(&mut self, step: u64) -> genlab_core::Result<()> {
        self.next_step = step;
        self.stop();
        Ok(())
    }

    fn next_batch(&mut self) -> genlab_core::Result<Batch> {
        if self.rx.is_none() {
            self.start();
        }
        let step = self.next_step;
        let received = self.rx.as_ref().and_then(|rx| rx.recv().ok());
        let (got, hb) = received.ok_or_else(|| genlab_core::CoreError::Other("data loader thread stopped".into()))?;
        debug_assert_eq!(got, step);
        self.next_step += 1;
        let hb = hb?;
        Ok(self.to_batch(hb, step)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::InMemory;
    use proptest::prelude::{prop_assert_eq, proptest};

    proptest! {
        #[test]
        fn every_index_once_per_epoch_across_ranks(len in 1usize..300, bs in 1usize..17, world in 1usize..5, seed in 0u64..1000, epoch in 0u64..3) {
            let cfg0 = LoaderConfig { world_size: world, ..LoaderConfig::new(bs, seed, Device::Cpu) };
            let per_epoch = batches_per_epoch(len, &cfg0) as u64;
            if per_epoch > 0 {
                let mut seen = vec![0usize; len];
                for rank in 0..world {
                    let cfg = LoaderConfig { rank, ..cfg0.clone() };
                    for s in epoch * per_epoch..(epoch + 1) * per_epoch {
                        let idx = batch_indices(len, &cfg, s);
                        prop_assert_eq!(idx.len(), bs);
                        for i in idx { seen[i] += 1; }
                    }
                }
                // Each index at most once; exactly (len / world / bs) * bs * world are used.
                prop_assert_eq!(seen.iter().filter(|&&c| c > 1).count(), 0);
                prop_assert_eq!(seen.iter().sum::<usize>(), (len / world / bs) * bs * world);
            }
        }

        #[test]
        fn without_drop_last_one_rank_sees_everything(len in 1usize..200, bs in 1usize..20) {
            let cfg = LoaderConfig { drop_last: false, ..LoaderConfig::new(bs, 3, Device::Cpu) };
            let per_epoch = batches_per_epoch(len, &cfg) as u64;
            let mut all: Vec<usize> = (0..per_epoch).flat_map(|s| batch_indices(len, &cfg, s)).collect();
            all.sort_unstable();
            prop_assert_eq!(all, (0..len).collect::<Vec<_>>());
        }
    }

    #[test]
    fn ranks_split_the_combined_batch() {
        for step in 0..12 {
            let one = LoaderConfig { world_size: 1, rank: 0, ..LoaderConfig::new(12, 5, Device::Cpu) };
            let mut combined = batch_indices(100, &one, step);
            let mut split: Vec<usize> = (0..3)
                .flat_map(|rank| {
                    let cfg = LoaderConfig { world_size: 3, rank, ..LoaderConfig::new(4, 5, Device::Cpu) };
                    batch_indices(100, &cfg, step)
                })
                .collect();
            combined.sort_unstable();
            split.sort_unstable();
            assert_eq!(combined, split, "step {step}");
        }
    }

    #[test]
    fn epochs_reshuffle_and_seek_replays() {
        let px: Vec<u8> = (0..40u32).map(|i| (i * 6) as u8).collect();
        let ds: Arc<dyn Dataset> = Arc::new(InMemory::new("t", [1, 1, 1], px, Some((0..40).collect())).unwrap());
        let cfg = LoaderConfig::new(8, 1, Device::Cpu);
        let e0: Vec<usize> = (0..5).flat_map(|s| batch_indices(40, &cfg, s)).collect();
        let e1: Vec<usize> = (5..10).flat_map(|s| batch_indices(40, &cfg, s)).collect();
        assert_ne!(e0, e1);
        let mut a = Loader::new(ds.clone(), cfg.clone()).unwrap();
        let seq: Vec<Tensor> = (0..7).map(|_| a.next_batch().unwrap().labels.unwrap()).collect();
        let mut b = Loader::new(ds, cfg).unwrap();
        b.seek(4).unwrap();
        for expected in &seq[4..] {
            let batch = b.next_batch().unwrap();
            assert!(batch.labels.unwrap().equal(expected));
            let v = batch.images.double_value(&[0, 0, 0, 0]);
            assert!((-1.0..=1.0).contains(&v));
        }
    }

    #[test]
    fn impossible_configs_are_errors() {
        let ds: Arc<dyn Dataset> = Arc::new(InMemory::new("t", [1, 2, 2], vec![0; 40], None).unwrap());
        assert!(Loader::new(ds.clone(), LoaderConfig::new(0, 0, Device::Cpu)).is_err());
        assert!(Loader::new(ds.clone(), LoaderConfig::new(11, 0, Device::Cpu))
            .unwrap_err()
            .to_string()
            .contains("cannot fill"));
        let cfg = LoaderConfig { rank: 2, world_size: 2, ..LoaderConfig::new(1, 0, Device::Cpu) };
        assert!(Loader::new(ds, cfg).is_err());
    }
}
