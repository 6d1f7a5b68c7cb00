//! Data-parallel training through the harness on c10d's Gloo, on loopback, on the CPU.
//!
//! The test binary re-launches itself as the ranks (the `worker` test, which does nothing
//! unless `GENLAB_DIST_TEST` is set), with torchrun's variables in the environment.
//! - `two_ranks_match_one_process_on_the_combined_batch`: 2 ranks x batch 8 for K steps end
//!   with identical parameters, within 1e-5 of one process training on batch 16.
//! - `a_killed_rank_makes_the_others_fail_fast`: SIGKILL rank 1 mid-run; rank 0 exits
//!   non-zero with an error that names the collective, well inside the timeout.
use genlab_core::checkpoint::CheckpointReader;
use genlab_core::dist::{self, DistOptions};
use genlab_core::optim::{Adam, AdamConfig};
use genlab_core::train::{self, Batch, BatchSource, HarnessConfig, StepOutput, TrainTask};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tch::{nn, nn::Module, Device, Kind, Tensor};

const IN: i64 = 8;
const OUT: i64 = 4;
const N: i64 = 256;
const STEPS: u64 = 12;

/// A two-layer MLP regressing a fixed smooth function of its input.
struct Regression {
    vs: nn::VarStore,
    net: nn::Sequential,
    opt: Adam,
}

impl Regression {
    fn new() -> Self {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = nn::seq()
            .add(nn::linear(vs.root() / "fc1", IN, 32, Default::default()))
            .add_fn(|x| x.tanh())
            .add(nn::linear(vs.root() / "fc2", 32, OUT, Default::default()));
        let opt = Adam::new(&vs, AdamConfig::adam(1e-2)).unwrap();
        Regression { vs, net, opt }
    }

    fn params(&self) -> Tensor {
        self.opt.flat_params().copy()
    }
}

fn target(x: &Tensor) -> Tensor {
    let w = Tensor::arange(IN * OUT, (Kind::Float, Device::Cpu)).view([IN, OUT]) / (IN * OUT) as f64 - 0.5;
    x.matmul(&w).sin()
}

impl TrainTask for Regression {
    fn train_step(&mut self, batch: &Batch, _step: u64) -> genlab_core::Result<StepOutput> {
        let x = batch.images.view([-1, IN]);
        let loss = (self.net.forward(&x) - target(&x)).square().mean(Kind::Float);
        self.opt.backward_step(&loss);
        Ok(StepOutput { loss: loss.double_value(&[]), metrics: vec![] })
    }
    fn samples(&mut self, n: i64) -> genlab_core::Result<Tensor> {
        Ok(Tensor::zeros([n, 1, 4, 4], (Kind::Float, Device::Cpu)))
    }
    fn checkpoint_groups(&self) -> BTreeMap<String, Vec<(String, Tensor)>> {
        let mut g = BTreeMap::new();
        g.insert("model".into(), self.vs.variables().into_iter().collect());
        g.insert("optim".into(), self.opt.state_tensors());
        g
    }
    fn restore(&mut self, ck: &CheckpointReader) -> genlab_core::Result<()> {
        ck.load_group_into("model", &self.vs)?;
        self.opt.load_state_tensors(&ck.read_group("optim")?)
    }
    fn config(&self) -> serde_json::Value {
        serde_json::json!({ "model": "mlp-regression" })
    }
}

/// Fixed inputs; the global batch of step `s` is rows `s*G..(s+1)*G` (mod N) and rank `r`
/// takes its `r`-th slice, so 2 ranks x B see exactly what 1 process x 2B sees.
struct Rows {
    x: Tensor,
    batch: i64,
    rank: i64,
    world: i64,
    step: u64,
}

impl Rows {
    fn new(batch: i64, rank: usize, world: usize) -> Self {
        let x = (Tensor::arange(N * IN, (Kind::Float, Device::Cpu)) * 0.37).sin().view([N, IN]);
        Rows { x, batch, rank: rank as i64, world: world as i64, step: 0 }
    }
}

impl BatchSource for Rows {
    fn seek(&mut self, step: u64) -> genlab_core::Result<()> {
        self.step = step;
        Ok(())
    }
    fn next_batch(&mut self) -> genlab_core::Result<Batch> {
        let g = self.batch * self.world;
        let start = (self.step as i64 * g + self.rank * self.batch) % N;
        self.step += 1;
        Ok(Batch { images: self.x.narrow(0, start, self.batch).view([self.batch, 1, 1, IN]), labels: None })
    }
}

fn harness(out: &Path, steps: u64) -> HarnessConfig {
    let mut cfg = HarnessConfig::new(out, steps);
    cfg.progress = false;
    cfg.sample_every = 0;
    cfg.checkpoint_every = 0;
    cfg.log_every = 2;
    cfg.n_samples = 4;
    cfg.stop = train::StopToken::new();
    cfg
}

/// The rank side: join from the environment, train, save the final parameters.
#[test]
#[ignore = "a rank of the distributed tests; they start it themselves"]
fn worker() {
    let Ok(dir) = std::env::var("GENLAB_DIST_TEST") else { return };
    let steps: u64 = std::env::var("GENLAB_DIST_TEST_STEPS").unwrap().parse().unwrap();
    let g = dist::init_from_env(DistOptions::from_env().unwrap()).unwrap().expect("WORLD_SIZE > 1");
    let mut task = Regression::new();
    let mut rows = Rows::new(8, g.rank(), g.world_size());
    let out = train::run(&mut task, &mut rows, &harness(Path::new(&dir), steps));
    if let Err(e) = out {
        eprintln!("genlab-dist-test error: {e}");
        dist::abandon();
        std::process::exit(3);
    }
    task.params().save(Path::new(&dir).join(format!("params-rank{}.pt", g.rank()))).unwrap();
    dist::shutdown().unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn_ranks(dir: &Path, steps: u64, timeout_s: u64) -> Vec<Child> {
    let port = free_port().to_string();
    (0..2)
        .map(|rank| {
            Command::new(std::env::current_exe().unwrap())
                .args(["worker", "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
                .env("GENLAB_DIST_TEST", dir)
                .env("GENLAB_DIST_TEST_STEPS", steps.to_string())
                .env("GENLAB_DIST_TIMEOUT", timeout_s.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", "2")
                .env("OMP_NUM_THREADS", "1")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect()
}

/// Wait for `child` until `deadline`; kill it (and fail) past it.
fn wait_until(child: &mut Child, deadline: Instant, what: &str) -> (std::process::ExitStatus, String) {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return (status, err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish before its deadline");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kill_all(children: &mut [Child]) {
    for c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn two_ranks_match_one_process_on_the_combined_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let dist_dir = tmp.path().join("dist");
    let mut ranks = spawn_ranks(&dist_dir, STEPS, 60);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut results = Vec::new();
    for (r, c) in ranks.iter_mut().enumerate() {
        results.push(wait_until(c, deadline, &format!("rank {r}")));
    }
    kill_all(&mut ranks);
    let failed: Vec<String> = results
        .iter()
        .enumerate()
        .filter(|(_, (status, _))| !status.success())
        .map(|(r, (status, err))| format!("rank {r} failed ({status}):\n{err}"))
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));

    let single_dir = tmp.path().join("single");
    let mut task = Regression::new();
    let mut rows = Rows::new(16, 0, 1);
    train::run(&mut task, &mut rows, &harness(&single_dir, STEPS)).unwrap();
    let single = task.params();
    let p0 = Tensor::load(dist_dir.join("params-rank0.pt")).unwrap();
    let p1 = Tensor::load(dist_dir.join("params-rank1.pt")).unwrap();
    assert!(p0.equal(&p1), "the ranks' parameters differ");
    let moved = (&single - Regression::new().params()).abs().max().double_value(&[]);
    assert!(moved > 1e-3, "training did not move the parameters ({moved})");
    let diff = (&p0 - &single).abs().max().double_value(&[]);
    assert!(diff <= 1e-5, "2 ranks x 8 differ from 1 process x 16 by {diff}");

    // Only rank 0 wrote the run directory: one checkpoint, one metrics file.
    let ckpts: Vec<PathBuf> = std::fs::read_dir(dist_dir.join("checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(ckpts.len(), 1, "{ckpts:?}");
    let metrics = std::fs::read_to_string(dist_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count() as u64, STEPS / 2, "{metrics}");
}

#[test]
fn a_killed_rank_makes_the_others_fail_fast() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let timeout_s = 40;
    let mut ranks = spawn_ranks(&dir, 1_000_000, timeout_s);
    let hard_deadline = Instant::now() + Duration::from_secs(60);
    // Wait until rank 0 has logged a few steps, so both ranks are inside the training loop.
    let metrics = dir.join("metrics.jsonl");
    while std::fs::read_to_string(&metrics).map(|m| m.lines().count()).unwrap_or(0) < 3 {
        if Instant::now() > hard_deadline || ranks.iter_mut().any(|c| c.try_wait().unwrap().is_some()) {
            kill_all(&mut ranks);
            panic!("the ranks did not start training");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let killed_at = Instant::now();
    ranks[1].kill().unwrap();
    let _ = ranks[1].wait();
    let (status, err) = wait_until(&mut ranks[0], hard_deadline, "rank 0 after rank 1 was killed");
    let took = killed_at.elapsed();
    kill_all(&mut ranks);
    eprintln!("rank 0, {took:?} after rank 1 was killed:\n{err}");
    assert!(!status.success(), "rank 0 succeeded after its peer died:\n{err}");
    assert!(took < Duration::from_secs(timeout_s), "rank 0 took {took:?} to notice");
    assert!(err.contains("distributed run, rank 0 of 2"), "{err}");
    assert!(err.contains("all_reduce") || err.contains("broadcast"), "the error names no collective:\n{err}");
}
