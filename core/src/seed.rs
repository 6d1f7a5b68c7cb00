//! Seeding and a small deterministic RNG for host-side randomness (shuffling, masks).
//!
//! Reproducibility works by deriving every random stream from `(seed, step)`: the
//! harness reseeds libtorch's generator at the start of each training step with
//! [`step_seed`], and loaders derive each epoch's permutation from `(seed, epoch)`.
//! Resuming at step `s` therefore replays exactly the randomness an uninterrupted
//! run would have used, without having to serialise generator state.

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough for shuffling.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    /// A stream derived from a seed and any number of integers (epoch, rank, ...).
    pub fn derive(seed: u64, parts: &[u64]) -> Self {
        let mut h = mix(seed ^ 0x9E37_79B9_7F4A_7C15);
        for &p in parts {
            h = mix(h ^ mix(p.wrapping_add(0xD1B5_4A32_D192_ED03)));
        }
        Rng::new(h)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.state)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (n > 0), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            xs.swap(i, j);
        }
    }

    /// A random permutation of `0..n`.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        self.shuffle(&mut p);
        p
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The libtorch seed used for training step `step` of a run seeded with `seed`.
pub fn step_seed(seed: u64, step: u64) -> i64 {
    (Rng::derive(seed, &[step]).next_u64() >> 1) as i64
}

/// The libtorch seed of rank `rank` for step `step`: rank 0 (and a single process) uses
/// [`step_seed`], so a one-process run is unchanged; other ranks draw their own noise.
pub fn rank_step_seed(seed: u64, step: u64, rank: usize) -> i64 {
    if rank == 0 {
        step_seed(seed, step)
    } else {
        (Rng::derive(seed, &[step, rank as u64]).next_u64() >> 1) as i64
    }
}

/// Seed libtorch's generators (CPU and, where present, CUDA).
pub fn manual_seed(seed: i64) {
    tch::manual_seed(seed);
}

/// The lock [`with_seed`] and [`with_generator_lock`] hold while they run.
static GENERATOR_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Run `f` with libtorch's generators seeded `seed`, holding a process-wide lock for its duration so that
/// seeded work on other threads (that also goes through here) cannot interleave its draws with `f`'s.
/// libtorch has one default generator per device; draws made without this lock on other threads at the
/// same time (building a model initialises its weights from it, too) still change `f`'s numbers.
pub fn with_seed<T>(seed: i64, f: impl FnOnce() -> T) -> T {
    let _guard = GENERATOR_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    f()
}

/// Run `f`, which draws from libtorch's generators without needing particular numbers (initialising a
/// model that weights will then overwrite), under [`with_seed`]'s lock, so that it cannot consume draws
/// from a seeded run on another thread.
pub fn with_generator_lock<T>(f: impl FnOnce() -> T) -> T {
    let _guard = GENERATOR_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    f()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{any, prop_assert, prop_assert_eq, proptest};

    proptest! {
        #[test]
        fn permutation_is_a_permutation(seed in any::<u64>(), n in 0usize..500) {
            let mut p = Rng::new(seed).permutation(n);
            p.sort_unstable();
            prop_assert_eq!(p, (0..n).collect::<Vec<_>>());
        }

        #[test]
        fn below_stays_below(seed in any::<u64>(), n in 1u64..1000) {
            let mut r = Rng::new(seed);
            for _ in 0..50 { prop_assert!(r.below(n) < n); }
        }
    }

    #[test]
    fn seeded_draws_on_many_threads_do_not_interleave() {
        fn draw() -> Vec<f32> {
            with_seed(5, || {
                let a = tch::Tensor::randn([64], (tch::Kind::Float, tch::Device::Cpu));
                let b = tch::Tensor::randn([64], (tch::Kind::Float, tch::Device::Cpu));
                Vec::<f32>::try_from(tch::Tensor::cat(&[a, b], 0)).unwrap_or_default()
            })
        }
        let want = draw();
        assert_eq!(want.len(), 128);
        let threads: Vec<_> =
            (0..4).map(|_| std::thread::spawn(|| (0..50).map(|_| draw()).collect::<Vec<_>>())).collect();
        for t in threads {
            for got in t.join().expect("thread") {
                assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn derived_streams_are_deterministic_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| Rng::derive(7, &[1]).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(Rng::derive(7, &[1]).next_u64(), Rng::derive(7, &[2]).next_u64());
        assert_ne!(Rng::derive(7, &[1, 0]).next_u64(), Rng::derive(7, &[0, 1]).next_u64());
        assert_ne!(step_seed(1, 5), step_seed(1, 6));
        assert_eq!(rank_step_seed(1, 5, 0), step_seed(1, 5));
        assert_ne!(rank_step_seed(1, 5, 1), rank_step_seed(1, 5, 0));
        assert_ne!(rank_step_seed(1, 5, 1), rank_step_seed(1, 5, 2));
        let mut r = Rng::new(3);
        let mean = (0..10_000).map(|_| r.next_f64()).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }
}
