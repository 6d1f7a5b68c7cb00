//! Low-rank adapters on linear and convolution layers (LoRA: Hu et al., "LoRA: Low-Rank Adaptation of
//! Large Language Models", arXiv 2106.09685), as peft 0.22's `LoraLayer` (`peft/tuners/lora/layer.py`)
//! computes them:
//!
//! `y = W x + b + sum_a w_a * s_a * B_a (A_a x)`, with `s_a = alpha_a / r_a` for adapter `a` of rank `r_a`
//! (down projection `A_a`: [r, in] or a conv [r, in, kh, kw] with the layer's stride and padding; up
//! projection `B_a`: [out, r] or a 1x1 conv [out, r, 1, 1]) and `w_a` the weight the user gives it.
//!
//! An adapter runs unfused (its own two products in every forward, so its weight can change at no cost)
//! or fused: `w s B A` added into `W` once; unfusing subtracts exactly what fusing added.
//!
//! Networks declare adaptable layers with [`linear`] and [`conv2d`] in place of `nn::linear` and
//! `nn::conv2d`; a model gathers its layers, by their variable-store names, with [`collect`] around its
//! constructor, as PyTorch's `named_modules` would list them, so adapters can be attached by name later.
//! A layer built outside [`collect`] behaves exactly as the plain `tch` layer.
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// What can go wrong attaching or changing an adapter. Each variant names the layer.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("{layer}: adapter `{adapter}` has {which} of shape {found:?}, expected {expected}")]
    Shape { layer: String, adapter: String, which: &'static str, found: Vec<i64>, expected: String },
    #[error("{layer}: an adapter named `{adapter}` is attached already")]
    Duplicate { layer: String, adapter: String },
    #[error("{layer}: adapter `{adapter}` is fused into the weights; unfuse it before changing its weight")]
    Fused { layer: String, adapter: String },
    #[error("{layer}: LoRA on a grouped convolution ({groups} groups) is not supported")]
    Groups { layer: String, groups: i64 },
}

/// How the adapted layer applies its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerShape {
    /// `weight`: [out, in].
    Linear,
    /// `weight`: [out, in, kh, kw].
    Conv2d { stride: [i64; 2], padding: [i64; 2], dilation: [i64; 2], groups: i64 },
}

#[derive(Debug)]
struct Adapter {
    name: String,
    /// [r, in] or [r, in, kh, kw].
    down: Tensor,
    /// [out, r] or [out, r, 1, 1].
    up: Tensor,
    /// alpha / r.
    scale: f64,
    weight: f64,
    /// The factor `weight * scale` the delta was added into the layer's weight with, while fused.
    fused: Option<f64>,
}

#[derive(Debug, Default)]
struct State {
    adapters: Vec<Adapter>,
}

/// One adaptable layer as [`collect`] lists it: its name, its weight and its adapters.
#[derive(Debug)]
pub struct Target {
    name: String,
    /// The layer's weight (shares storage with the variable store).
    weight: Tensor,
    shape: LayerShape,
    state: Arc<Mutex<State>>,
}

impl Clone for Target {
    fn clone(&self) -> Self {
        Target {
            name: self.name.clone(),
            weight: self.weight.shallow_clone(),
            shape: self.shape,
            state: self.state.clone(),
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave the adapter list half-written: every change is one push,
    // one retain or one field write.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Target {
    /// The layer's name in its variable store (`down_blocks.0.attentions.0.proj_in`).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn shape(&self) -> LayerShape {
        self.shape
    }

    /// The layer's weight, [out, in] or [out, in, kh, kw] (the variable itself: fusing changes it).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The names of the attached adapters, in attachment order.
    pub fn adapters(&self) -> Vec<String> {
        lock(&self.state).adapters.iter().map(|a| a.name.clone()).collect()
    }

    /// The shapes an adapter of rank `r` must have: (down, up).
    pub fn expected_shapes(&self, r: i64) -> (Vec<i64>, Vec<i64>) {
        let w = self.weight.size();
        match self.shape {
            LayerShape::Linear => (vec![r, w[1]], vec![w[0], r]),
            LayerShape::Conv2d { .. } => (vec![r, w[1], w[2], w[3]], vec![w[0], r, 1, 1]),
        }
    }

    /// Check that `down` and `up` fit this layer (the rank is `down`'s first dimension) and return the rank.
    /// A linear adapter on a 1x1 convolution is accepted (kohya files store both as 2-D or 4-D).
    pub fn check(&self, adapter: &str, down: &Tensor, up: &Tensor) -> Result<i64, LoraError> {
        if let LayerShape::Conv2d { groups, .. } = self.shape {
            if groups != 1 {
                return Err(LoraError::Groups { layer: self.name.clone(), groups });
            }
        }
        let r = down.size().first().copied().unwrap_or(0);
        let (want_down, want_up) = self.expected_shapes(r);
        let fits = |t: &Tensor, want: &[i64]| squeezed(&t.size()) == squeezed(want);
        let err = |which: &'static str, t: &Tensor, want: &[i64]| LoraError::Shape {
            layer: self.name.clone(),
            adapter: adapter.to_string(),
            which,
            found: t.size(),
            expected: format!("{want:?} (weight {:?}, rank {r})", self.weight.size()),
        };
        if r < 1 || !fits(down, &want_down) {
            return Err(err("down (A)", down, &want_down));
        }
        if !fits(up, &want_up) {
            return Err(err("up (B)", up, &want_up));
        }
        Ok(r)
    }

    /// Attach an adapter unfused, with `scale = alpha / r` and the user's `weight`. The tensors are copied
    /// to the layer's device and kind.
    pub fn attach(&self, adapter: &str, down: &Tensor, up: &Tensor, scale: f64, weight: f64) -> Result<(), LoraError> {
        let r = self.check(adapter, down, up)?;
        let (want_down, want_up) = self.expected_shapes(r);
        let mut st = lock(&self.state);
        if st.adapters.iter().any(|a| a.name == adapter) {
            return Err(LoraError::Duplicate { layer: self.name.clone(), adapter: adapter.to_string() });
        }
        let place = |t: &Tensor, want: &[i64]| {
            t.detach().reshape(want).to_device(self.weight.device()).to_kind(self.weight.kind())
        };
        st.adapters.push(Adapter {
            name: adapter.to_string(),
            down: place(down, &want_down),
            up: place(up, &want_up),
            scale,
            weight,
            fused: None,
        });
        Ok(())
    }

    /// Attach a trainable adapter: `down` and `up` (of exactly [`Target::expected_shapes`], on the layer's device
    /// and kind) are used as they are, not copied, so gradients reach them (variables of the optimizer's store).
    pub fn attach_trainable(&self, adapter: &str, down: &Tensor, up: &Tensor, scale: f64) -> Result<(), LoraError> {
        let r = self.check(adapter, down, up)?;
        let (want_down, want_up) = self.expected_shapes(r);
        for (which, t, want) in [("down (A)", down, &want_down), ("up (B)", up, &want_up)] {
            if &t.size() != want {
                return Err(LoraError::Shape {
                    layer: self.name.clone(),
                    adapter: adapter.to_string(),
                    which,
                    found: t.size(),
                    expected: format!("{want:?} exactly (a trainable adapter is not reshaped)"),
                });
            }
        }
        let mut st = lock(&self.state);
        if st.adapters.iter().any(|a| a.name == adapter) {
            return Err(LoraError::Duplicate { layer: self.name.clone(), adapter: adapter.to_string() });
        }
        st.adapters.push(Adapter {
            name: adapter.to_string(),
            down: down.shallow_clone(),
            up: up.shallow_clone(),
            scale,
            weight: 1.0,
            fused: None,
        });
        Ok(())
    }

    /// Set an unfused adapter's weight; `false` if the layer has no adapter of that name.
    pub fn set_weight(&self, adapter: &str, weight: f64) -> Result<bool, LoraError> {
        let mut st = lock(&self.state);
        match st.adapters.iter_mut().find(|a| a.name == adapter) {
            None => Ok(false),
            Some(a) if a.fused.is_some() => {
                Err(LoraError::Fused { layer: self.name.clone(), adapter: adapter.to_string() })
            }
            Some(a) => {
                a.weight = weight;
                Ok(true)
            }
        }
    }

    /// The delta `B A` of an adapter in the weight's layout, in f32.
    fn delta(&self, a: &Adapter) -> Tensor {
        let size = self.weight.size();
        let up = a.up.to_kind(Kind::Float).flatten(1, -1);
        let down = a.down.to_kind(Kind::Float).flatten(1, -1);
        up.matmul(&down).reshape(size.as_slice())
    }

    fn add_delta(&self, a: &Adapter, factor: f64) {
        tch::no_grad(|| {
            let delta = (self.delta(a) * factor).to_kind(self.weight.kind());
            let _ = self.weight.shallow_clone().g_add_(&delta);
        });
    }

    /// Add every unfused adapter (or those named in `only`) into the layer's weight at its current weight.
    pub fn fuse(&self, only: Option<&[&str]>) {
        let mut st = lock(&self.state);
        for a in st.adapters.iter_mut() {
            if a.fused.is_none() && only.is_none_or(|names| names.contains(&a.name.as_str())) {
                let factor = a.weight * a.scale;
                self.add_delta(a, factor);
                a.fused = Some(factor);
            }
        }
    }

    /// Take every fused adapter out of the layer's weight again (subtracting what fusing added).
    pub fn unfuse(&self) {
        let mut st = lock(&self.state);
        for a in st.adapters.iter_mut().rev() {
            if let Some(factor) = a.fused.take() {
                self.add_delta(a, -factor);
            }
        }
    }

    /// Detach an adapter (unfusing it first if fused); `false` if there was none of that name.
    pub fn remove(&self, adapter: &str) -> bool {
        let mut st = lock(&self.state);
        let Some(i) = st.adapters.iter().position(|a| a.name == adapter) else { return false };
        let a = st.adapters.remove(i);
        if let Some(factor) = a.fused {
            self.add_delta(&a, -factor);
        }
        true
    }

    /// `y` plus every unfused adapter's `w s B (A x)` (out of place, so autograd sees plain sums).
    fn apply(&self, xs: &Tensor, y: Tensor) -> Tensor {
        let st = lock(&self.state);
        st.adapters.iter().filter(|a| a.fused.is_none() && a.weight != 0.0).fold(y, |y, a| {
            let cast = |t: &Tensor| if t.kind() == xs.kind() { t.shallow_clone() } else { t.to_kind(xs.kind()) };
            let (down, up) = (cast(&a.down), cast(&a.up));
            let h = match self.shape {
                LayerShape::Linear => xs.linear(&down, None::<Tensor>).linear(&up, None::<Tensor>),
                LayerShape::Conv2d { stride, padding, dilation, .. } => xs
                    .conv2d(&down, None::<Tensor>, stride, padding, dilation, 1)
                    .conv2d(&up, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1),
            };
            y + h * (a.weight * a.scale)
        })
    }
}

/// The dimensions of `s` other than 1s, so that [r, in] and [r, in, 1, 1] compare equal.
fn squeezed(s: &[i64]) -> Vec<i64> {
    s.iter().copied().filter(|&d| d != 1).collect()
}

/// A model's adaptable layers by name, as [`collect`] gathered them.
#[derive(Debug, Clone, Default)]
pub struct Targets(BTreeMap<String, Target>);

impl Targets {
    pub fn get(&self, name: &str) -> Option<&Target> {
        self.0.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Target)> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Fuse the adapters of every layer (those named in `only`, or all).
    pub fn fuse(&self, only: Option<&[&str]>) {
        self.0.values().for_each(|t| t.fuse(only));
    }

    /// Unfuse every fused adapter of every layer.
    pub fn unfuse(&self) {
        self.0.values().for_each(Target::unfuse);
    }

    /// Detach adapter `name` everywhere; the number of layers it was on.
    pub fn remove(&self, name: &str) -> usize {
        self.0.values().filter(|t| t.remove(name)).count()
    }

    /// Set adapter `name`'s weight everywhere; the number of layers it is on.
    pub fn set_weight(&self, name: &str, weight: f64) -> Result<usize, LoraError> {
        let mut n = 0;
        for t in self.0.values() {
            n += usize::from(t.set_weight(name, weight)?);
        }
        Ok(n)
    }

    /// The names of all attached adapters.
    pub fn adapters(&self) -> Vec<String> {
        let mut names: Vec<String> = self.0.values().flat_map(Target::adapters).collect();
        names.sort();
        names.dedup();
        names
    }
}

thread_local! {
    /// The layers declared inside each active [`collect`], innermost last.
    static GATHERING: RefCell<Vec<Vec<Target>>> = const { RefCell::new(Vec::new()) };
}

/// Run `build` (a model's constructor) and return what it built with every adaptable layer declared
/// inside it, by name. Nested calls each see only their own layers.
pub fn collect<T>(build: impl FnOnce() -> T) -> (T, Targets) {
    struct Pop;
    impl Drop for Pop {
        fn drop(&mut self) {
            GATHERING.with(|g| g.borrow_mut().pop());
        }
    }
    GATHERING.with(|g| g.borrow_mut().push(Vec::new()));
    let guard = Pop;
    let out = build();
    let layers = GATHERING.with(|g| g.borrow_mut().last_mut().map(std::mem::take)).unwrap_or_default();
    drop(guard);
    (out, Targets(layers.into_iter().map(|t| (t.name.clone(), t)).collect()))
}

/// The target of a new layer, listed with the innermost active [`collect`] if there is one.
fn declare(vs: &nn::Path<'_>, weight: &Tensor, shape: LayerShape) -> Target {
    let name = vs.components().collect::<Vec<_>>().join(".");
    let target = Target { name, weight: weight.shallow_clone(), shape, state: Arc::new(Mutex::new(State::default())) };
    GATHERING.with(|g| {
        if let Some(layers) = g.borrow_mut().last_mut() {
            layers.push(target.clone());
        }
    });
    target
}

/// A linear layer that can carry adapters (`nn::Linear` with its `ws` and `bs` through `Deref`).
#[derive(Debug)]
pub struct Linear {
    base: nn::Linear,
    target: Target,
}

/// `nn::linear` with adapters: see the module documentation.
pub fn linear(vs: nn::Path<'_>, in_dim: i64, out_dim: i64, cfg: nn::LinearConfig) -> Linear {
    let base = nn::linear(&vs, in_dim, out_dim, cfg);
    let target = declare(&vs, &base.ws, LayerShape::Linear);
    Linear { base, target }
}

impl Linear {
    /// The layer as an adapter target.
    pub fn target(&self) -> &Target {
        &self.target
    }
}

impl std::ops::Deref for Linear {
    type Target = nn::Linear;
    fn deref(&self) -> &nn::Linear {
        &self.base
    }
}

impl std::ops::DerefMut for Linear {
    fn deref_mut(&mut self) -> &mut nn::Linear {
        &mut self.base
    }
}

impl Module for Linear {
    /// # Shapes
    /// - `xs`: [..., in] -> [..., out]
    fn forward(&self, xs: &Tensor) -> Tensor {
        self.target.apply(xs, self.base.forward(xs))
    }
}

/// A 2-D convolution that can carry adapters (`nn::Conv2D` through `Deref`).
#[derive(Debug)]
pub struct Conv2D {
    base: nn::Conv2D,
    target: Target,
}

/// `nn::conv2d` with adapters: see the module documentation.
pub fn conv2d(vs: nn::Path<'_>, c_in: i64, c_out: i64, kernel: i64, cfg: nn::ConvConfig) -> Conv2D {
    let base = nn::conv2d(&vs, c_in, c_out, kernel, cfg);
    let shape = LayerShape::Conv2d {
        stride: [cfg.stride; 2],
        padding: [cfg.padding; 2],
        dilation: [cfg.dilation; 2],
        groups: cfg.groups,
    };
    let target = declare(&vs, &base.ws, shape);
    Conv2D { base, target }
}

impl Conv2D {
    /// The layer as an adapter target.
    pub fn target(&self) -> &Target {
        &self.target
    }
}

impl std::ops::Deref for Conv2D {
    type Target = nn::Conv2D;
    fn deref(&self) -> &nn::Conv2D {
        &self.base
    }
}

impl std::ops::DerefMut for Conv2D {
    fn deref_mut(&mut self) -> &mut nn::Conv2D {
        &mut self.base
    }
}

impl Module for Conv2D {
    /// # Shapes
    /// - `xs`: [batch, c_in, h, w] -> [batch, c_out, h', w']
    fn forward(&self, xs: &Tensor) -> Tensor {
        self.target.apply(xs, self.base.forward(xs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn close(a: &Tensor, b: &Tensor, tol: f64) -> bool {
        (a - b).abs().max().double_value(&[]) <= tol
    }

    #[test]
    fn collect_names_the_layers_declared_inside_it_only() {
        let vs = nn::VarStore::new(Device::Cpu);
        let outside = linear(vs.root() / "outside", 3, 4, Default::default());
        let (_, targets) = collect(|| {
            let a = linear(vs.root() / "blocks" / 0 / "to_q", 3, 4, Default::default());
            let (_, inner) = collect(|| conv2d(vs.root() / "inner", 2, 2, 3, Default::default()));
            assert_eq!(inner.len(), 1);
            a
        });
        assert_eq!(targets.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["blocks.0.to_q"]);
        assert!(outside.target().adapters().is_empty());
    }

    #[test]
    fn unfused_linear_adapter_adds_weighted_scaled_low_rank_product() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let (layer, targets) = collect(|| linear(vs.root() / "l", 6, 5, Default::default()));
        let x = Tensor::randn([2, 6], (Kind::Float, Device::Cpu));
        let before = layer.forward(&x);
        let down = Tensor::randn([3, 6], (Kind::Float, Device::Cpu));
        let up = Tensor::randn([5, 3], (Kind::Float, Device::Cpu));
        targets.get("l").unwrap().attach("a", &down, &up, 2.0 / 3.0, 0.5).unwrap();
        let want = &before + x.matmul(&down.tr()).matmul(&up.tr()) * (0.5 * 2.0 / 3.0);
        assert!(close(&layer.forward(&x), &want, 1e-5));
        assert_eq!(targets.set_weight("a", 0.0).unwrap(), 1);
        assert!(close(&layer.forward(&x), &before, 0.0));
    }

    #[test]
    fn fused_equals_unfused_and_unfusing_restores_the_weight() {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = nn::ConvConfig { stride: 2, padding: 1, ..Default::default() };
        let (conv, targets) = collect(|| conv2d(vs.root() / "c", 4, 6, 3, cfg));
        let w0 = conv.ws.copy();
        let x = Tensor::randn([2, 4, 9, 9], (Kind::Float, Device::Cpu));
        let t = targets.get("c").unwrap();
        t.attach(
            "a",
            &Tensor::randn([2, 4, 3, 3], (Kind::Float, Device::Cpu)),
            &Tensor::randn([6, 2, 1, 1], (Kind::Float, Device::Cpu)),
            0.5,
            0.7,
        )
        .unwrap();
        t.attach(
            "b",
            &Tensor::randn([3, 4, 3, 3], (Kind::Float, Device::Cpu)),
            &Tensor::randn([6, 3], (Kind::Float, Device::Cpu)),
            1.0,
            -0.3,
        )
        .unwrap();
        let unfused = conv.forward(&x);
        assert!(!close(&unfused, &x.conv2d(&w0, conv.bs.as_ref(), [2, 2], [1, 1], [1, 1], 1), 1e-3));
        targets.fuse(None);
        assert!(!close(&conv.ws, &w0, 1e-3));
        assert!(close(&conv.forward(&x), &unfused, 1e-4));
        assert!(matches!(targets.set_weight("a", 1.0), Err(LoraError::Fused { .. })));
        targets.unfuse();
        assert!(close(&conv.ws, &w0, 1e-6));
        assert!(close(&conv.forward(&x), &unfused, 1e-4));
        assert_eq!(targets.remove("a"), 1);
        assert_eq!(t.adapters(), ["b"]);
    }

    #[test]
    fn trainable_adapters_pass_gradients_to_their_variables() {
        tch::manual_seed(2);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let (layer, targets) = collect(|| linear(vs.root() / "l", 4, 3, Default::default()));
        vs.freeze();
        let lora = nn::VarStore::new(Device::Cpu);
        let down = lora.root().randn("down", &[2, 4], 0.0, 1.0);
        let up = lora.root().randn("up", &[3, 2], 0.0, 1.0);
        targets.get("l").unwrap().attach_trainable("a", &down, &up, 0.5).unwrap();
        let x = Tensor::randn([5, 4], (Kind::Float, Device::Cpu));
        layer.forward(&x).sum(Kind::Float).backward();
        assert!(down.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
        assert!(up.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
        assert!(!layer.ws.grad().defined());
        let wrong = lora.root().zeros("wrong", &[2, 4, 1, 1]);
        assert!(targets.get("l").unwrap().attach_trainable("b", &wrong, &up, 1.0).is_err());
    }

    #[test]
    fn wrong_shapes_and_duplicates_are_refused_by_name() {
        let vs = nn::VarStore::new(Device::Cpu);
        let (_l, targets) = collect(|| linear(vs.root() / "proj", 8, 4, Default::default()));
        let t = targets.get("proj").unwrap();
        let f = |s: &[i64]| Tensor::zeros(s, (Kind::Float, Device::Cpu));
        let e = t.attach("a", &f(&[2, 7]), &f(&[4, 2]), 1.0, 1.0).unwrap_err().to_string();
        assert!(e.contains("proj") && e.contains("[2, 7]") && e.contains("[2, 8]"), "{e}");
        let e = t.attach("a", &f(&[2, 8]), &f(&[4, 3]), 1.0, 1.0).unwrap_err().to_string();
        assert!(e.contains("up (B)") && e.contains("[4, 3]"), "{e}");
        t.attach("a", &f(&[2, 8, 1, 1]), &f(&[4, 2, 1, 1]), 1.0, 1.0).unwrap();
        assert!(matches!(t.attach("a", &f(&[2, 8]), &f(&[4, 2]), 1.0, 1.0), Err(LoraError::Duplicate { .. })));
    }
}
