//! Adam and AdamW (Kingma & Ba 2014, arXiv 1412.6980; Loshchilov & Hutter 2017,
//! arXiv 1711.05101) over one flat parameter buffer.
//!
//! tch has neither foreach nor fused optimizer kernels, and its optimizers launch
//! several small ops per parameter tensor. Here every trainable variable of a
//! [`VarStore`] becomes a view into one contiguous parameter buffer, and its `.grad`
//! a view into one contiguous gradient buffer (autograd accumulates into an existing
//! gradient in place). A step is then a handful of large ops whatever the number of
//! tensors, as in PyTorch's `_multi_tensor_adam`, but without a list per op.
//! The update follows `torch.optim.Adam` / `AdamW` (non-amsgrad) exactly.
//!
//! In a distributed run (see [`crate::dist`]) the flat gradient buffer is averaged over the
//! ranks before each update, which is what makes every trainer built on `Adam` data-parallel.
use crate::error::{CoreError, Result};
use crate::precision::GradScaler;
use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// AdamW: decay the weights directly instead of adding `weight_decay * p` to the gradient.
    pub decoupled_weight_decay: bool,
    /// Clip the global gradient norm to this value before the update.
    pub max_grad_norm: Option<f64>,
}

impl Default for AdamConfig {
    /// PyTorch's defaults for `torch.optim.Adam`.
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
            max_grad_norm: None,
        }
    }
}

impl AdamConfig {
    pub fn adam(lr: f64) -> Self {
        AdamConfig { lr, ..Default::default() }
    }
    /// PyTorch's `torch.optim.AdamW` defaults (weight decay 0.01).
    pub fn adamw(lr: f64, weight_decay: f64) -> Self {
        AdamConfig { lr, weight_decay, decoupled_weight_decay: true, ..Default::default() }
    }
    pub fn betas(mut self, beta1: f64, beta2: f64) -> Self {
        self.beta1 = beta1;
        self.beta2 = beta2;
        self
    }
}

#[allow(unsafe_code)]
mod shim {
    use tch::Tensor;
    extern "C" {
        fn genlab_set_grad(t: *mut torch_sys::C_tensor, grad: *mut torch_sys::C_tensor) -> i32;
    }
    pub(super) fn set_grad(t: &mut Tensor, grad: &mut Tensor) -> bool {
        // SAFETY: both pointers are live tch tensors (at::Tensor*) borrowed for the call;
        // the C++ side copies the handle (refcount) and catches every exception.
        unsafe { genlab_set_grad(t.as_mut_ptr(), grad.as_mut_ptr()) == 0 }
    }
}

struct Slot {
    name: String,
    /// Start in the flat buffers (a multiple of [`ALIGN`]).
    offset: i64,
    param: Tensor,
    grad_view: Tensor,
}

/// Every tensor starts on a 64-byte boundary of the flat buffers (16 f32 values), as a
/// separately allocated tensor would; the gaps stay zero and are never updated.
const ALIGN: i64 = 16;

fn align_up(x: i64) -> i64 {
    (x + ALIGN - 1) / ALIGN * ALIGN
}

/// Adam/AdamW over all trainable variables of one [`VarStore`].
pub struct Adam {
    cfg: AdamConfig,
    slots: Vec<Slot>,
    params: Tensor,
    grads: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: i64,
}

impl std::fmt::Debug for Adam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adam")
            .field("cfg", &self.cfg)
            .field("tensors", &self.slots.len())
            .field("numel", &self.params.numel())
            .field("step", &self.step)
            .finish()
    }
}

impl Adam {
    /// Take over the trainable variables of `vs` (sorted by name). Build it after the
    /// VarStore has reached its device and dtype: the variables become views of the flat buffer.
    pub fn new(vs: &VarStore, cfg: AdamConfig) -> Result<Self> {
        let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        if named.is_empty() {
            return Err(CoreError::Config("optimizer: the VarStore has no trainable variables".into()));
        }
        let kind = named[0].1.kind();
        let device = named[0].1.device();
        if let Some((n, t)) = named.iter().find(|(_, t)| t.kind() != kind || t.device() != device) {
            return Err(CoreError::Config(format!(
                "optimizer: variable `{n}` is {:?} on {:?}, others are {kind:?} on {device:?}",
                t.kind(),
                t.device()
            )));
        }
        let total: i64 = named.iter().map(|(_, t)| align_up(t.numel() as i64)).sum();
        let params = Tensor::zeros([total], (kind, device));
        let grads = Tensor::zeros([total], (kind, device));
        let mut slots = Vec::with_capacity(named.len());
        let mut off = 0i64;
        tch::no_grad(|| -> Result<()> {
            for (name, mut p) in named {
                let n = p.numel() as i64;
                let shape = p.size();
                let mut pv = params.narrow(0, off, n).view(shape.as_slice());
                pv.copy_(&p);
                p.set_data(&pv);
                let mut gv = grads.narrow(0, off, n).view(shape.as_slice());
                if !shim::set_grad(&mut p, &mut gv) {
                    return Err(CoreError::Other(format!(
                        "optimizer: could not attach the gradient buffer to `{name}`"
                    )));
                }
                slots.push(Slot { name, offset: off, param: p, grad_view: gv });
                off += align_up(n);
            }
            Ok(())
        })?;
        Ok(Adam { cfg, slots, exp_avg: params.zeros_like(), exp_avg_sq: params.zeros_like(), params, grads, step: 0 })
    }

    pub fn config(&self) -> &AdamConfig {
        &self.cfg
    }
    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }
    pub fn lr(&self) -> f64 {
        self.cfg.lr
    }
    /// Number of updates taken so far.
    pub fn steps_taken(&self) -> i64 {
        self.step
    }
    /// Total number of parameters.
    pub fn numel(&self) -> i64 {
        self.params.numel() as i64
    }
    /// The flat gradient buffer (all gradients in name order, each starting 64-byte aligned).
    pub fn flat_grads(&self) -> &Tensor {
        &self.grads
    }
    /// The flat parameter buffer.
    pub fn flat_params(&self) -> &Tensor {
        &self.params
    }

    pub fn zero_grad(&mut self) {
        let _ = self.grads.zero_();
    }

    /// Global L2 norm of the gradients (a scalar tensor; reading it synchronises).
    pub fn grad_norm(&self) -> Tensor {
        self.grads.norm()
    }

    /// If autograd replaced a `.grad` instead of accumulating in place (double backward
    /// with `create_graph`), copy it into the flat buffer and re-attach the view.
    fn gather_detached_grads(&mut self) {
        for s in self.slots.iter_mut() {
            let g = s.param.grad();
            if g.defined() && g.data_ptr() != s.grad_view.data_ptr() {
                tch::no_grad(|| s.grad_view.copy_(&g));
                let _ = shim::set_grad(&mut s.param, &mut s.grad_view);
            }
        }
    }

    /// Average the flat gradient buffer over the ranks of the default process group
    /// (a no-op in a single process). A failed collective is recorded in the group, which
    /// the harness reports after the step; the update is then skipped.
    fn sync_grads(&mut self) -> bool {
        match crate::dist::group() {
            Some(g) => g.all_reduce_mean(&self.grads).is_ok(),
            None => true,
        }
    }

    /// One Adam update from the accumulated gradients (averaged over the ranks in a
    /// distributed run, see [`crate::dist`]).
    pub fn step(&mut self) {
        self.gather_detached_grads();
        if self.sync_grads() {
            self.update();
        }
    }

    fn update(&mut self) {
        let c = self.cfg;
        self.step += 1;
        let t = self.step as i32;
        tch::no_grad(|| {
            if let Some(max) = c.max_grad_norm {
                let norm = self.grads.norm();
                let coef = (norm + 1e-6).reciprocal().g_mul_scalar(max).clamp_max(1.0);
                let _ = self.grads.g_mul_(&coef);
            }
            if c.weight_decay != 0.0 {
                if c.decoupled_weight_decay {
                    let _ = self.params.g_mul_scalar_(1.0 - c.lr * c.weight_decay);
                } else {
                    let _ = self.grads.g_add_(&(&self.params * c.weight_decay));
                }
            }
            let bc1 = 1.0 - c.beta1.powi(t);
            let bc2 = 1.0 - c.beta2.powi(t);
            // m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
            let _ = self.exp_avg.lerp_(&self.grads, 1.0 - c.beta1);
            let _ = self.exp_avg_sq.lerp_(&self.grads.square(), 1.0 - c.beta2);
            // p <- p - (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps), with the constants
            // folded into the denominator so the update is one addcdiv.
            let mut denom = self.exp_avg_sq.sqrt();
            let _ = denom.g_add_scalar_(c.eps * bc2.sqrt());
            let _ = denom.g_mul_scalar_(-bc1 / (c.lr * bc2.sqrt()));
            let _ = self.params.addcdiv_(&self.exp_avg, &denom);
        });
    }

    /// `zero_grad`, backward, `step`.
    pub fn backward_step(&mut self, loss: &Tensor) {
        self.zero_grad();
        loss.backward();
        self.step();
    }

    /// fp16 mixed precision: backward through the scaled loss, unscale the flat gradient
    /// buffer (one op), and step only when every gradient is finite; the scaler adapts.
    /// Returns whether the step was taken.
    pub fn backward_step_scaled(&mut self, loss: &Tensor, scaler: &mut GradScaler) -> bool {
        self.zero_grad();
        scaler.scale_loss(loss).backward();
        self.gather_detached_grads();
        // Average before the inf check: an overflow on any rank reaches every rank, so all
        // skip the step and back the scale off together.
        if !self.sync_grads() {
            return false;
        }
        let finite = scaler.unscale(std::slice::from_mut(&mut self.grads));
        let take = scaler.update(finite);
        if take {
            self.update();
        }
        take
    }

    /// [`Adam::backward_step`], or [`Adam::backward_step_scaled`] when a scaler is given.
    pub fn backward_step_with(&mut self, loss: &Tensor, scaler: Option<&mut GradScaler>) -> bool {
        match scaler {
            Some(s) => self.backward_step_scaled(loss, s),
            None => {
                self.backward_step(loss);
                true
            }
        }
    }

    /// Optimizer state as named tensors (`exp_avg.<param>`, `exp_avg_sq.<param>`, `step`).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.slots.len() + 1);
        for s in &self.slots {
            let (off, n) = (s.offset, s.param.numel() as i64);
            let shape = s.param.size();
            out.push((format!("exp_avg.{}", s.name), self.exp_avg.narrow(0, off, n).view(shape.as_slice())));
            out.push((format!("exp_avg_sq.{}", s.name), self.exp_avg_sq.narrow(0, off, n).view(shape.as_slice())));
        }
        out.push(("step".into(), Tensor::from_slice(&[self.step])));
        out
    }

    /// Restore what [`Adam::state_tensors`] produced, reporting every mismatch at once.
    pub fn load_state_tensors(&mut self, named: &[(String, Tensor)]) -> Result<()> {
        let mut expected: Vec<(String, Tensor)> = self.state_tensors();
        expected.pop(); // "step" is read below
        let map: std::collections::HashMap<&str, &Tensor> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut report = crate::checkpoint::KeyReport::default();
        for (name, dst) in &expected {
            match map.get(name.as_str()) {
                None => report.missing.push(name.clone()),
                Some(src) if src.size() != dst.size() => report.mismatched.push((name.clone(), dst.size(), src.size())),
                Some(_) => {}
            }
        }
        let want: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).chain(["step"]).collect();
        report.unexpected = named.iter().filter(|(n, _)| !want.contains(n.as_str())).map(|(n, _)| n.clone()).collect();
        if !report.is_empty() {
            return Err(CoreError::Config(format!("optimizer state does not match the model:\n{report}")));
        }
        tch::no_grad(|| {
            for (name, dst) in &expected {
                dst.shallow_clone().copy_(map[name.as_str()]);
            }
        });
        self.step = match map.get("step") {
            Some(t) => t.int64_value(&[0]),
            None => 0,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, nn::Module, Device, Kind};

    /// Textbook Adam/AdamW in f64, one scalar at a time.
    fn reference(p: &mut [f64], m: &mut [f64], v: &mut [f64], g: &[f64], c: &AdamConfig, t: i32) {
        for i in 0..p.len() {
            let mut gi = g[i];
            if c.decoupled_weight_decay {
                p[i] *= 1.0 - c.lr * c.weight_decay;
            } else {
                gi += c.weight_decay * p[i];
            }
            m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * gi;
            v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * gi * gi;
            let mhat = m[i] / (1.0 - c.beta1.powi(t));
            let vhat = v[i] / (1.0 - c.beta2.powi(t));
            p[i] -= c.lr * mhat / (vhat.sqrt() + c.eps);
        }
    }

    fn check(cfg: AdamConfig) {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = nn::seq()
            .add(nn::linear(vs.root() / "a", 5, 7, Default::default()))
            .add_fn(|x| x.tanh())
            .add(nn::linear(vs.root() / "b", 7, 3, Default::default()));
        let x = Tensor::randn([16, 5], (Kind::Float, Device::Cpu));
        let y = Tensor::randn([16, 3], (Kind::Float, Device::Cpu));
        let mut opt = Adam::new(&vs, cfg).unwrap();
        let flat = |t: &Tensor| {
            Vec::<f32>::try_from(t.detach().to_kind(Kind::Float))
                .unwrap()
                .into_iter()
                .map(f64::from)
                .collect::<Vec<f64>>()
        };
        let mut p = flat(opt.flat_params());
        let mut m = vec![0.0; p.len()];
        let mut v = vec![0.0; p.len()];
        for t in 1..=5 {
            opt.zero_grad();
            let loss = (net.forward(&x) - &y).square().mean(Kind::Float);
            loss.backward();
            // Gradients landed in the flat buffer, in name order.
            let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            for (slot, (name, var)) in opt.slots.iter().zip(&vars) {
                assert_eq!(&slot.name, name);
                assert_eq!(slot.offset % ALIGN, 0);
                let n = var.numel() as i64;
                let view = opt.flat_grads().narrow(0, slot.offset, n).view(var.size().as_slice());
                assert!(var.grad().equal(&view), "{name}: .grad is not its slot of the flat buffer");
            }
            assert!(opt.flat_grads().abs().sum(Kind::Float).double_value(&[]) > 0.0);
            let g = flat(opt.flat_grads());
            opt.step();
            reference(&mut p, &mut m, &mut v, &g, &cfg, t);
            let got = flat(opt.flat_params());
            let err = got.iter().zip(&p).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(err < 1e-6, "step {t}: max error {err}");
            // The model's own variables moved with the buffer.
            let w = flat(&vs.variables()["a.bias"]);
            let off = 0usize; // "a.bias" sorts first
            assert!((w[0] - got[off]).abs() < 1e-7);
        }
    }

    #[test]
    fn adam_matches_the_textbook_update() {
        check(AdamConfig::adam(1e-2));
        check(AdamConfig { weight_decay: 0.1, ..AdamConfig::adam(1e-2) });
    }

    #[test]
    fn adamw_matches_the_textbook_update() {
        check(AdamConfig::adamw(1e-2, 0.05).betas(0.5, 0.99));
    }

    #[test]
    fn state_round_trips_and_reports_mismatches() {
        let vs = nn::VarStore::new(Device::Cpu);
        let lin = nn::linear(vs.root() / "l", 3, 2, Default::default());
        let mut opt = Adam::new(&vs, AdamConfig::adam(0.1)).unwrap();
        let loss = lin.forward(&Tensor::ones([4, 3], (Kind::Float, Device::Cpu))).sum(Kind::Float);
        opt.backward_step(&loss);
        let state: Vec<(String, Tensor)> = opt.state_tensors().into_iter().map(|(n, t)| (n, t.copy())).collect();
        let vs2 = nn::VarStore::new(Device::Cpu);
        let _l2 = nn::linear(vs2.root() / "l", 3, 2, Default::default());
        let mut opt2 = Adam::new(&vs2, AdamConfig::adam(0.1)).unwrap();
        opt2.load_state_tensors(&state).unwrap();
        assert_eq!(opt2.steps_taken(), 1);
        assert!(opt2.state_tensors()[0].1.equal(&state[0].1));
        let vs3 = nn::VarStore::new(Device::Cpu);
        let _l3 = nn::linear(vs3.root() / "l", 3, 5, Default::default());
        let mut opt3 = Adam::new(&vs3, AdamConfig::adam(0.1)).unwrap();
        let e = opt3.load_state_tensors(&state).unwrap_err().to_string();
        assert!(e.contains("exp_avg.l.weight: model expects [5, 3], file has [2, 3]"), "{e}");
    }

    #[test]
    fn scaled_steps_skip_overflow_and_match_unscaled_ones() {
        let make = || {
            let vs = nn::VarStore::new(Device::Cpu);
            let w = vs.root().ones("w", &[3]);
            (vs, w)
        };
        let x = Tensor::from_slice(&[1.0f32, -2.0, 0.5]);
        // With a finite scale, the scaled step equals the plain one.
        let (vs1, w1) = make();
        let (vs2, w2) = make();
        let mut o1 = Adam::new(&vs1, AdamConfig::adam(0.1)).unwrap();
        let mut o2 = Adam::new(&vs2, AdamConfig::adam(0.1)).unwrap();
        let mut scaler = GradScaler { scale: 1024.0, ..Default::default() };
        o1.backward_step(&(&w1 * &x).sum(Kind::Float));
        assert!(o2.backward_step_scaled(&(&w2 * &x).sum(Kind::Float), &mut scaler));
        assert!(o1.flat_params().allclose(o2.flat_params(), 1e-6, 1e-6, false));
        // An overflowing loss skips the step, keeps the weights and halves the scale.
        let before = o2.flat_params().copy();
        let inf = (&w2 * Tensor::from_slice(&[f32::MAX, 1.0, 1.0])).sum(Kind::Float);
        assert!(!o2.backward_step_scaled(&inf, &mut scaler));
        assert!(o2.flat_params().equal(&before));
        assert_eq!(scaler.scale, 512.0);
        assert_eq!(o2.steps_taken(), 1);
    }

    #[test]
    fn double_backward_gradients_are_still_used() {
        // create_graph replaces .grad out of place; the step must still see it.
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().ones("w", &[3]);
        let mut opt = Adam::new(&vs, AdamConfig::adam(0.1)).unwrap();
        let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).set_requires_grad(true);
        let y = (&w * &x).square().sum(Kind::Float);
        let gx = Tensor::run_backward(&[&y], &[&x], true, true)[0].shallow_clone();
        let penalty = gx.square().sum(Kind::Float);
        opt.zero_grad();
        penalty.backward();
        let before = opt.flat_params().copy();
        opt.step();
        assert!(!opt.flat_params().equal(&before));
        assert!(opt.flat_grads().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }
}
