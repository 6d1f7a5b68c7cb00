//! The training harness end to end with a small model: exact resume, NaN stops that keep
//! the last good checkpoint, refusing to overwrite a run, and metrics.
use genlab_core::checkpoint::CheckpointReader;
use genlab_core::optim::{Adam, AdamConfig};
use genlab_core::seed::Rng;
use genlab_core::train::{self, Batch, BatchSource, HarnessConfig, Status, StepOutput, TrainTask};
use std::collections::BTreeMap;
use tch::nn::{self, Module, VarStore};
use tch::{Device, Kind, Tensor};

/// Batches of random "images" whose label is a fixed function of the pixels.
struct Source {
    step: u64,
}

impl BatchSource for Source {
    fn seek(&mut self, step: u64) -> genlab_core::Result<()> {
        self.step = step;
        Ok(())
    }
    fn next_batch(&mut self) -> genlab_core::Result<Batch> {
        let mut r = Rng::derive(11, &[self.step]);
        self.step += 1;
        let v: Vec<f32> = (0..8 * 4).map(|_| r.next_f64() as f32 * 2.0 - 1.0).collect();
        let images = Tensor::from_slice(&v).view([8, 1, 2, 2]);
        Ok(Batch { images, labels: None })
    }
}

struct Task {
    vs: VarStore,
    net: nn::Sequential,
    opt: Adam,
    nan_at: Option<u64>,
}

impl Task {
    fn new() -> Self {
        let vs = VarStore::new(Device::Cpu);
        let net = nn::seq()
            .add(nn::linear(vs.root() / "fc1", 4, 16, Default::default()))
            .add_fn(|x| x.relu())
            // Dropout makes the step depend on libtorch's RNG, which resume must replay.
            .add_fn(|x| x.dropout(0.2, true))
            .add(nn::linear(vs.root() / "fc2", 16, 1, Default::default()));
        let opt = Adam::new(&vs, AdamConfig::adam(1e-2)).unwrap();
        Task { vs, net, opt, nan_at: None }
    }
}

impl TrainTask for Task {
    fn train_step(&mut self, batch: &Batch, step: u64) -> genlab_core::Result<StepOutput> {
        let x = batch.images.flatten(1, -1);
        let target = x.sum_dim_intlist(-1, true, Kind::Float).sin();
        let loss = (self.net.forward(&x) - target).square().mean(Kind::Float);
        self.opt.backward_step(&loss);
        let l = if Some(step) == self.nan_at { f64::NAN } else { loss.double_value(&[]) };
        Ok(StepOutput { loss: l, metrics: vec![("lr".into(), self.opt.lr())] })
    }
    fn samples(&mut self, n: i64) -> genlab_core::Result<Tensor> {
        Ok(Tensor::rand([n, 1, 4, 4], (Kind::Float, Device::Cpu)) * 2.0 - 1.0)
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
        serde_json::json!({ "family": "test" })
    }
}

/// libtorch's generator is process-wide: runs in parallel test threads would interleave it.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn cfg(out: &std::path::Path, steps: u64) -> HarnessConfig {
    HarnessConfig {
        checkpoint_every: 7,
        sample_every: 0,
        log_every: 1,
        progress: false,
        seed: 5,
        ..HarnessConfig::new(out, steps)
    }
}

fn weights(dir: &std::path::Path) -> Vec<u8> {
    std::fs::read(dir.join("model.safetensors")).unwrap()
}

#[test]
fn resume_ends_bit_identical_to_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(1);
    let full = train::run(&mut Task::new(), &mut Source { step: 0 }, &cfg(&a, 30)).unwrap();
    assert_eq!(full.status, Status::Finished);
    // Interrupted at 17 (checkpoints at 7 and 14, and 17 at the end), then resumed to 30.
    tch::manual_seed(1);
    let part = train::run(&mut Task::new(), &mut Source { step: 0 }, &cfg(&b, 17)).unwrap();
    assert_eq!(part.step, 17);
    let resumed =
        train::run(&mut Task::new(), &mut Source { step: 0 }, &HarnessConfig { resume: true, ..cfg(&b, 30) }).unwrap();
    assert_eq!(resumed.step, 30);
    let wa = weights(full.last_checkpoint.as_ref().unwrap());
    let wb = weights(resumed.last_checkpoint.as_ref().unwrap());
    assert!(wa == wb, "resumed weights differ from the uninterrupted run");
    let oa = std::fs::read(full.last_checkpoint.unwrap().join("optim.safetensors")).unwrap();
    let ob = std::fs::read(resumed.last_checkpoint.unwrap().join("optim.safetensors")).unwrap();
    assert!(oa == ob);
    // The metrics file has each step once.
    let lines = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=30).collect::<Vec<_>>());
    // A different seed changes the result (the test can fail).
    let c = tmp.path().join("c");
    tch::manual_seed(1);
    let other =
        train::run(&mut Task::new(), &mut Source { step: 0 }, &HarnessConfig { seed: 6, ..cfg(&c, 30) }).unwrap();
    assert!(weights(&other.last_checkpoint.unwrap()) != wa);
}

#[test]
fn a_nan_loss_stops_and_keeps_the_last_good_checkpoint() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let mut task = Task::new();
    task.nan_at = Some(9);
    let err = train::run(&mut task, &mut Source { step: 0 }, &cfg(tmp.path(), 30)).unwrap_err().to_string();
    assert!(err.contains("loss is NaN") && err.contains("step 9"), "{err}");
    assert!(err.contains("step-00000007"), "{err}");
    let run = train::RunDir::new(tmp.path());
    let latest = run.latest().unwrap();
    assert_eq!(latest.step(), 7);
    let mut fresh = Task::new();
    fresh.restore(&latest).unwrap();
    let status: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.status_file()).unwrap()).unwrap();
    assert_eq!(status["status"], "failed");
}

#[test]
fn refuses_to_overwrite_and_to_resume_nothing() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let e =
        train::run(&mut Task::new(), &mut Source { step: 0 }, &HarnessConfig { resume: true, ..cfg(tmp.path(), 3) })
            .unwrap_err();
    assert!(e.to_string().contains("no checkpoint"), "{e}");
    train::run(&mut Task::new(), &mut Source { step: 0 }, &cfg(tmp.path(), 3)).unwrap();
    let e = train::run(&mut Task::new(), &mut Source { step: 0 }, &cfg(tmp.path(), 3)).unwrap_err();
    assert!(e.to_string().contains("--resume"), "{e}");
    let e = train::run(
        &mut Task::new(),
        &mut Source { step: 0 },
        &HarnessConfig { resume: true, seed: 99, ..cfg(tmp.path(), 6) },
    )
    .unwrap_err();
    assert!(e.to_string().contains("--seed 5"), "{e}");
}

#[test]
fn a_stop_request_saves_then_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    struct Stopper(Task, train::StopToken);
    impl TrainTask for Stopper {
        fn train_step(&mut self, b: &Batch, s: u64) -> genlab_core::Result<StepOutput> {
            if s == 4 {
                self.1.request();
            }
            self.0.train_step(b, s)
        }
        fn samples(&mut self, n: i64) -> genlab_core::Result<Tensor> {
            self.0.samples(n)
        }
        fn checkpoint_groups(&self) -> BTreeMap<String, Vec<(String, Tensor)>> {
            self.0.checkpoint_groups()
        }
        fn restore(&mut self, ck: &CheckpointReader) -> genlab_core::Result<()> {
            self.0.restore(ck)
        }
        fn config(&self) -> serde_json::Value {
            self.0.config()
        }
    }
    let token = train::StopToken::new();
    let c = HarnessConfig { stop: token.clone(), ..cfg(tmp.path(), 100) };
    let out = train::run(&mut Stopper(Task::new(), token), &mut Source { step: 0 }, &c).unwrap();
    assert_eq!((out.status, out.step), (Status::Stopped, 5));
    assert_eq!(train::RunDir::new(tmp.path()).latest().unwrap().step(), 5);
}
