//! Optimizer-step benchmark: a 784-256-10 MLP, batch 128, Adam, 200 steps, on the CPU.
//! `cargo xtask bench optim` runs it beside `bench/optim.py` (PyTorch from Python).
//! Prints `name seconds` lines: the whole training step, and the optimizer alone.
use genlab_core::optim::{Adam, AdamConfig};
use std::time::Instant;
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

const STEPS: usize = 200;
const WARMUP: usize = 20;

fn model(vs: &nn::VarStore) -> impl Module {
    let r = vs.root();
    nn::seq().add(nn::linear(&r / "fc1", 784, 256, Default::default())).add_fn(|x| x.relu()).add(nn::linear(
        &r / "fc2",
        256,
        10,
        Default::default(),
    ))
}

fn main() {
    tch::manual_seed(0);
    let threads = std::env::var("GENLAB_BENCH_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(2);
    tch::set_num_threads(threads);
    let x = Tensor::randn([128, 784], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(10, [128], (Kind::Int64, Device::Cpu));

    // genlab's flat Adam.
    let vs = nn::VarStore::new(Device::Cpu);
    let net = model(&vs);
    let mut opt = Adam::new(&vs, AdamConfig::adam(1e-3)).expect("optimizer");
    let step = |opt: &mut Adam| {
        let loss = net.forward(&x).cross_entropy_for_logits(&y);
        opt.backward_step(&loss);
    };
    for _ in 0..WARMUP {
        step(&mut opt);
    }
    let t = Instant::now();
    for _ in 0..STEPS {
        step(&mut opt);
    }
    println!("genlab_train_steps {:.6}", t.elapsed().as_secs_f64());
    let t = Instant::now();
    for _ in 0..STEPS {
        opt.step();
    }
    println!("genlab_optimizer_only {:.6}", t.elapsed().as_secs_f64());

    // tch's own Adam, for reference.
    let vs2 = nn::VarStore::new(Device::Cpu);
    let net2 = model(&vs2);
    let mut opt2 = nn::Adam::default().build(&vs2, 1e-3).expect("tch adam");
    for _ in 0..WARMUP {
        opt2.backward_step(&net2.forward(&x).cross_entropy_for_logits(&y));
    }
    let t = Instant::now();
    for _ in 0..STEPS {
        opt2.backward_step(&net2.forward(&x).cross_entropy_for_logits(&y));
    }
    println!("tch_train_steps {:.6}", t.elapsed().as_secs_f64());
    let t = Instant::now();
    for _ in 0..STEPS {
        opt2.step();
    }
    println!("tch_optimizer_only {:.6}", t.elapsed().as_secs_f64());
}
