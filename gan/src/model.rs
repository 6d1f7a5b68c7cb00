//! The networks: DCGAN's generator and discriminator, WGAN critics, a class-conditional
//! generator and a projection discriminator.
//!
//! - DCGAN: Radford, Metz & Chintala, "Unsupervised Representation Learning with Deep
//!   Convolutional Generative Adversarial Networks" (arXiv 1511.06434). The layer layout,
//!   the N(0, 0.02) initialisation and the `main.<i>` parameter names follow PyTorch's
//!   reference, `pytorch/examples` `dcgan/main.py` (`Generator.main`, `Discriminator.main`),
//!   so a 64x64 state dict of that script loads by name (it also stores BatchNorm's
//!   `num_batches_tracked`, which tch does not keep). The discriminator returns logits:
//!   the final sigmoid lives in the loss.
//! - WGAN critics (Arjovsky et al., arXiv 1701.07875; Gulrajani et al., arXiv 1704.00028):
//!   the same layout without BatchNorm, which would make the critic's output for one sample
//!   depend on the rest of the batch and the gradient penalty meaningless; LayerNorm or no
//!   normalisation instead.
//! - Spectral normalisation (Miyato et al., "Spectral Normalization for Generative
//!   Adversarial Networks", arXiv 1802.05957), as `torch.nn.utils.spectral_norm`:
//!   parameter `weight_orig`, buffers `weight_u`, `weight_v`, one power iteration per
//!   training forward.
//! - Conditional GAN (Mirza & Osindero, arXiv 1411.1784): the generator concatenates a
//!   learned label embedding of size `num_classes` to z, as `eriklindernoren/PyTorch-GAN`
//!   `implementations/cgan/cgan.py` (`label_emb`). The discriminator is the projection
//!   discriminator of Miyato & Koyama, "cGANs with Projection Discriminator"
//!   (arXiv 1802.05637): `l_out(h) + <l_y(y), h>` on globally sum-pooled features `h`, as
//!   `pfnet-research/sngan_projection` `dis_models/snresnet.py` (`l6`, `l_y`; here `l_out`, `l_y`).
//!
//! Sizes: with `stages` stride-2 stages an image of side `s` starts from a `s / 2^stages`
//! base: 28 -> 7 -> 14 -> 28, 32 -> 4 -> ... -> 32, 64 -> 4 -> ... -> 64, 8 -> 2 -> 4 -> 8.
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, ModuleT};
use tch::{Kind, Tensor};

use crate::error::{GanError, Result};

/// Normalisation between the discriminator's convolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DNorm {
    /// BatchNorm, as DCGAN.
    Batch,
    /// LayerNorm over (channels, height, width), as the WGAN-GP critic.
    Layer,
    None,
}

/// The networks' sizes and options. The default is the paper's 64x64 RGB DCGAN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GanConfig {
    /// [channels, height, width]; height and width equal.
    pub image_shape: [i64; 3],
    pub latent_dim: i64,
    /// Generator width (`ngf`): channels of the last stage before the output.
    pub g_width: i64,
    /// Discriminator width (`ndf`): channels of its first stage.
    pub d_width: i64,
    /// Stride-2 stages of each network; the side must be divisible by `2^stages`.
    pub stages: usize,
    pub d_norm: DNorm,
    /// Spectral normalisation of every discriminator weight.
    pub spectral_norm: bool,
    /// Class-conditional: label embedding in G, projection discriminator.
    pub num_classes: Option<i64>,
}

impl Default for GanConfig {
    /// DCGAN for 64x64x3 images: z of 100, ngf = ndf = 64, four stages, BatchNorm.
    fn default() -> Self {
        GanConfig {
            image_shape: [3, 64, 64],
            latent_dim: 100,
            g_width: 64,
            d_width: 64,
            stages: 4,
            d_norm: DNorm::Batch,
            spectral_norm: false,
            num_classes: None,
        }
    }
}

impl GanConfig {
    /// The DCGAN layout for images of `image_shape`, with as many stages as keep a base of
    /// at least 4 pixels (28 -> 7, 32 -> 4, 64 -> 4, 8 -> 4).
    pub fn for_images(image_shape: [i64; 3]) -> Self {
        GanConfig { image_shape, stages: auto_stages(image_shape[1]), ..Default::default() }
    }

    pub fn validate(&self) -> Result<()> {
        let [c, h, w] = self.image_shape;
        if c <= 0 || h <= 0 || w <= 0 || self.latent_dim <= 0 || self.g_width <= 0 || self.d_width <= 0 {
            return Err(GanError::Config(format!(
                "invalid GAN sizes: image {:?}, latent {}, widths g {} d {}",
                self.image_shape, self.latent_dim, self.g_width, self.d_width
            )));
        }
        if h != w {
            return Err(GanError::Config(format!("the DCGAN networks need square images; got {h}x{w}")));
        }
        if self.stages == 0 || self.stages > 8 {
            return Err(GanError::Config(format!("stages must be in 1..=8, got {}", self.stages)));
        }
        let f = 1i64 << self.stages;
        if h % f != 0 {
            return Err(GanError::Config(format!(
                "{} stride-2 stages need a side divisible by {f}; got {h}x{w}",
                self.stages
            )));
        }
        if self.num_classes.is_some_and(|k| k < 1) {
            return Err(GanError::Config(format!("num_classes must be at least 1, got {:?}", self.num_classes)));
        }
        Ok(())
    }

    /// Side of the first (generator) and last (discriminator) feature map.
    pub fn base(&self) -> i64 {
        self.image_shape[1] >> self.stages
    }

    /// Channels at the base resolution: `width * 2^(stages - 1)`.
    fn base_channels(&self, width: i64) -> i64 {
        width << (self.stages - 1)
    }
}

/// Halve `side` while it stays even and at least 4 after halving.
pub fn auto_stages(side: i64) -> usize {
    let mut s = side;
    let mut n = 0;
    while s % 2 == 0 && s / 2 >= 4 {
        s /= 2;
        n += 1;
    }
    n.max(1)
}

/// DCGAN's initialisation: N(0, 0.02).
const DCGAN_INIT: nn::Init = nn::Init::Randn { mean: 0.0, stdev: 0.02 };

fn dcgan_batch_norm(vs: nn::Path<'_>, channels: i64) -> nn::BatchNorm {
    nn::batch_norm2d(
        vs,
        channels,
        nn::BatchNormConfig {
            ws_init: nn::Init::Randn { mean: 1.0, stdev: 0.02 },
            bs_init: nn::Init::Const(0.0),
            ..Default::default()
        },
    )
}

fn check_labels(labels: Option<&Tensor>, n: i64, num_classes: Option<i64>, network: &str) -> Result<Option<Tensor>> {
    match (num_classes, labels) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(GanError::Labels(format!("this {network} is unconditional; it takes no class labels"))),
        (Some(k), None) => {
            Err(GanError::Labels(format!("this {network} is class-conditional ({k} classes): labels are required")))
        }
        (Some(k), Some(l)) => {
            if l.size() != [n] || l.kind() != Kind::Int64 {
                return Err(GanError::Labels(format!(
                    "expected int64 labels of shape [{n}], got {:?} of shape {:?}",
                    l.kind(),
                    l.size()
                )));
            }
            if n > 0 {
                let (min, max) = (l.min().int64_value(&[]), l.max().int64_value(&[]));
                if min < 0 || max >= k {
                    return Err(GanError::Labels(format!("labels must be in 0..{k}, found {min}..={max}")));
                }
            }
            Ok(Some(l.shallow_clone()))
        }
    }
}

/// Spectral normalisation of one weight, as `torch.nn.utils.spectral_norm` (dim 0, one
/// power iteration, eps 1e-12): variables `weight_orig` (trained), `weight_u` and
/// `weight_v` (buffers holding the power iteration's singular vectors).
pub struct SpectralNorm {
    weight_orig: Tensor,
    weight_u: Tensor,
    weight_v: Tensor,
}

impl std::fmt::Debug for SpectralNorm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpectralNorm").field("shape", &self.weight_orig.size()).finish()
    }
}

const SN_EPS: f64 = 1e-12;

fn normalize(v: &Tensor) -> Tensor {
    v / v.norm().clamp_min(SN_EPS)
}

impl SpectralNorm {
    /// A normalised weight of `shape` (dim 0 is the output dimension) under `vs`.
    pub fn new(vs: nn::Path<'_>, shape: &[i64], init: nn::Init) -> Self {
        let weight_orig = vs.var("weight_orig", shape, init);
        let h = shape[0];
        let w: i64 = shape[1..].iter().product();
        let opts = (Kind::Float, vs.device());
        let weight_u = vs.add("weight_u", normalize(&Tensor::randn([h], opts)), false);
        let weight_v = vs.add("weight_v", normalize(&Tensor::randn([w], opts)), false);
        SpectralNorm { weight_orig, weight_u, weight_v }
    }

    /// The weight divided by its largest singular value, estimated with the stored vectors.
    /// In training, one power iteration first refines `weight_u` and `weight_v` in place.
    ///
    /// # Shapes
    /// - returns the shape of `weight_orig`
    pub fn weight(&self, train: bool) -> Tensor {
        let mat = self.weight_orig.flatten(1, -1);
        if train {
            tch::no_grad(|| {
                let v = normalize(&mat.tr().mv(&self.weight_u));
                let u = normalize(&mat.mv(&v));
                self.weight_v.shallow_clone().copy_(&v);
                self.weight_u.shallow_clone().copy_(&u);
            });
        }
        // Copies: the graph keeps them while the buffers change in the next forward.
        let (u, v) = (self.weight_u.copy(), self.weight_v.copy());
        let sigma = u.dot(&mat.mv(&v));
        &self.weight_orig / sigma
    }
}

/// A weight with or without spectral normalisation (`weight` or `weight_orig/_u/_v`).
enum Weight {
    Plain(Tensor),
    Spectral(SpectralNorm),
}

impl Weight {
    fn new(vs: &nn::Path<'_>, shape: &[i64], spectral: bool) -> Self {
        if spectral {
            Weight::Spectral(SpectralNorm::new(vs.clone(), shape, DCGAN_INIT))
        } else {
            Weight::Plain(vs.var("weight", shape, DCGAN_INIT))
        }
    }
    fn get(&self, train: bool) -> Tensor {
        match self {
            Weight::Plain(w) => w.shallow_clone(),
            Weight::Spectral(sn) => sn.weight(train),
        }
    }
}

/// A discriminator convolution, optionally spectrally normalised.
struct DConv {
    weight: Weight,
    bias: Option<Tensor>,
    stride: i64,
    padding: i64,
}

impl std::fmt::Debug for DConv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DConv").field("stride", &self.stride).finish()
    }
}

impl DConv {
    fn new(
        vs: nn::Path<'_>,
        c_in: i64,
        c_out: i64,
        kernel: i64,
        stride: i64,
        padding: i64,
        bias: bool,
        sn: bool,
    ) -> Self {
        let weight = Weight::new(&vs, &[c_out, c_in, kernel, kernel], sn);
        let bias = bias.then(|| vs.var("bias", &[c_out], nn::Init::Const(0.0)));
        DConv { weight, bias, stride, padding }
    }
}

impl ModuleT for DConv {
    /// # Shapes
    /// - `xs`: [batch, c_in, h, w] -> [batch, c_out, h', w']
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.conv2d(&self.weight.get(train), self.bias.as_ref(), [self.stride], [self.padding], [1], 1)
    }
}

/// DCGAN's generator (with a label embedding when class-conditional). Parameters:
/// `main.<i>` (ConvTranspose2d / BatchNorm2d at PyTorch's `nn.Sequential` indices) and
/// `label_emb.weight`.
pub struct Generator {
    pub cfg: GanConfig,
    label_emb: Option<nn::Embedding>,
    main: nn::SequentialT,
    device: tch::Device,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator").field("cfg", &self.cfg).finish()
    }
}

impl Generator {
    pub fn new(vs: nn::Path<'_>, cfg: GanConfig) -> Result<Self> {
        cfg.validate()?;
        let k = cfg.num_classes.unwrap_or(0);
        let label_emb = cfg.num_classes.map(|k| nn::embedding(&vs / "label_emb", k, k, Default::default()));
        let main_p = &vs / "main";
        let conv = |i: usize, c_in: i64, c_out: i64, kernel: i64, stride: i64, padding: i64| {
            let c = nn::ConvTransposeConfig { stride, padding, bias: false, ws_init: DCGAN_INIT, ..Default::default() };
            nn::conv_transpose2d(&main_p / i, c_in, c_out, kernel, c)
        };
        let mut ch = cfg.base_channels(cfg.g_width);
        // z as a 1x1 map -> base x base.
        let mut main = nn::seq_t()
            .add(conv(0, cfg.latent_dim + k, ch, cfg.base(), 1, 0))
            .add(dcgan_batch_norm(&main_p / 1, ch))
            .add_fn(|x| x.relu());
        let mut i = 3;
        for _ in 1..cfg.stages {
            main = main
                .add(conv(i, ch, ch / 2, 4, 2, 1))
                .add(dcgan_batch_norm(&main_p / (i + 1), ch / 2))
                .add_fn(|x| x.relu());
            ch /= 2;
            i += 3;
        }
        main = main.add(conv(i, ch, cfg.image_shape[0], 4, 2, 1)).add_fn(|x| x.tanh());
        Ok(Generator { cfg, label_emb, main, device: vs.device() })
    }

    pub fn device(&self) -> tch::Device {
        self.device
    }

    /// Images from latents (and labels, for a conditional generator). `train` selects
    /// BatchNorm's batch statistics (and updates its running averages) or the running averages.
    ///
    /// # Shapes
    /// - `z`: [batch, latent_dim]; `labels`: [batch] int64 -> [batch, c, h, w] in [-1, 1]
    pub fn forward(&self, z: &Tensor, labels: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let s = z.size();
        if s.len() != 2 || s[1] != self.cfg.latent_dim {
            return Err(GanError::Config(format!(
                "the generator takes latents of shape [batch, {}], got {s:?}",
                self.cfg.latent_dim
            )));
        }
        let n = s[0];
        let y = check_labels(labels, n, self.cfg.num_classes, "generator")?;
        let inp = match (&self.label_emb, y) {
            (Some(emb), Some(y)) => Tensor::cat(&[z.shallow_clone(), emb.forward(&y)], 1),
            _ => z.shallow_clone(),
        };
        let d = inp.size()[1];
        Ok(self.main.forward_t(&inp.view([n, d, 1, 1]), train))
    }
}

/// The discriminator's output head.
enum Head {
    /// DCGAN's last convolution, `base x base` -> 1x1, named `main.<i>`.
    Conv(DConv),
    /// Projection: `l_out(h) + <l_y(y), h>` on sum-pooled features `h`.
    Projection { l_out: Weight, l_out_bias: Tensor, l_y: Weight },
}

/// DCGAN's discriminator, a WGAN critic, or a projection discriminator, by configuration.
/// Parameters: `main.<i>` (Conv2d / BatchNorm2d / LayerNorm at PyTorch's indices), and for
/// the projection head `l_out.*`, `l_y.*`. Outputs are logits (critic values), one per image.
pub struct Discriminator {
    pub cfg: GanConfig,
    main: nn::SequentialT,
    head: Head,
}

impl std::fmt::Debug for Discriminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discriminator").field("cfg", &self.cfg).finish()
    }
}

impl Discriminator {
    pub fn new(vs: nn::Path<'_>, cfg: GanConfig) -> Result<Self> {
        cfg.validate()?;
        let [c, side, _] = cfg.image_shape;
        let sn = cfg.spectral_norm;
        // DCGAN's convolutions carry no bias (a normalisation follows); without one they do.
        let bias = cfg.d_norm == DNorm::None;
        let main_p = &vs / "main";
        let lrelu = |x: &Tensor| genlab_core::layers::leaky_relu(x, 0.2);
        let mut main = nn::seq_t().add(DConv::new(&main_p / 0, c, cfg.d_width, 4, 2, 1, bias, sn)).add_fn(lrelu);
        let mut ch = cfg.d_width;
        let mut s = side / 2;
        let mut i = 2;
        for _ in 1..cfg.stages {
            main = main.add(DConv::new(&main_p / i, ch, ch * 2, 4, 2, 1, bias, sn));
            ch *= 2;
            s /= 2;
            i += 1;
            match cfg.d_norm {
                DNorm::Batch => {
                    main = main.add(dcgan_batch_norm(&main_p / i, ch));
                    i += 1;
                }
                DNorm::Layer => {
                    main = main.add(nn::layer_norm(&main_p / i, vec![ch, s, s], Default::default()));
                    i += 1;
                }
                DNorm::None => {}
            }
            main = main.add_fn(lrelu);
            i += 1;
        }
        let head = match cfg.num_classes {
            None => Head::Conv(DConv::new(&main_p / i, ch, 1, cfg.base(), 1, 0, bias, sn)),
            Some(k) => Head::Projection {
                l_out: Weight::new(&(&vs / "l_out"), &[1, ch], sn),
                l_out_bias: (&vs / "l_out").var("bias", &[1], nn::Init::Const(0.0)),
                l_y: Weight::new(&(&vs / "l_y"), &[k, ch], sn),
            },
        };
        Ok(Discriminator { cfg, main, head })
    }

    /// Check that `x` is a batch of this discriminator's images.
    pub fn check_images(&self, x: &Tensor) -> Result<()> {
        let s = x.size();
        if s.len() != 4 || s[1..] != self.cfg.image_shape {
            return Err(GanError::ImageShape { network: "discriminator", expected: self.cfg.image_shape, found: s });
        }
        Ok(())
    }

    /// Logits (critic values). `train` selects BatchNorm's batch statistics and runs the
    /// spectral-norm power iteration.
    ///
    /// # Shapes
    /// - `x`: [batch, c, h, w]; `labels`: [batch] int64 (conditional) -> [batch]
    pub fn forward(&self, x: &Tensor, labels: Option<&Tensor>, train: bool) -> Result<Tensor> {
        self.check_images(x)?;
        let n = x.size()[0];
        let y = check_labels(labels, n, self.cfg.num_classes, "discriminator")?;
        let h = self.main.forward_t(x, train);
        Ok(match (&self.head, y) {
            (Head::Conv(conv), _) => conv.forward_t(&h, train).view([n]),
            (Head::Projection { l_out, l_out_bias, l_y }, Some(y)) => {
                let h = h.sum_dim_intlist([2i64, 3].as_slice(), false, Kind::Float);
                let out = h.linear(&l_out.get(train), Some(l_out_bias)).view([n]);
                let emb = Tensor::embedding(&l_y.get(train), &y, -1, false, false);
                out + (emb * &h).sum_dim_intlist(1, false, Kind::Float)
            }
            (Head::Projection { .. }, None) => {
                return Err(GanError::Labels("the projection discriminator needs labels".into()))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device};

    #[test]
    fn stages_follow_the_image_side() {
        assert_eq!(auto_stages(28), 2);
        assert_eq!(auto_stages(32), 3);
        assert_eq!(auto_stages(64), 4);
        assert_eq!(auto_stages(8), 1);
        let cfg = GanConfig::for_images([1, 28, 28]);
        assert_eq!(cfg.base(), 7);
    }

    #[test]
    fn dcgan_64_uses_pytorch_examples_names_and_shapes() {
        let vs = VarStore::new(Device::Cpu);
        let _g = Generator::new(vs.root() / "g", GanConfig::default()).unwrap();
        let _d = Discriminator::new(vs.root() / "d", GanConfig::default()).unwrap();
        let v = vs.variables();
        // pytorch/examples dcgan/main.py with nz=100, ngf=ndf=64, nc=3.
        for (name, shape) in [
            ("g.main.0.weight", vec![100, 512, 4, 4]),
            ("g.main.1.running_mean", vec![512]),
            ("g.main.3.weight", vec![512, 256, 4, 4]),
            ("g.main.12.weight", vec![64, 3, 4, 4]),
            ("d.main.0.weight", vec![64, 3, 4, 4]),
            ("d.main.3.weight", vec![128]),
            ("d.main.11.weight", vec![1, 512, 4, 4]),
        ] {
            assert_eq!(v.get(name).map(|t| t.size()), Some(shape), "{name}");
        }
        assert_eq!(v.len(), 5 + 4 * 4 + 5 + 3 * 4);
    }

    #[test]
    fn spectral_norm_converges_to_the_largest_singular_value() {
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let sn = SpectralNorm::new(vs.root(), &[6, 3, 2, 2], DCGAN_INIT);
        for _ in 0..200 {
            let _ = sn.weight(true);
        }
        let w = sn.weight(false);
        // The normalised weight has spectral norm 1.
        let m = w.flatten(1, -1).to_kind(Kind::Double);
        let s = m.matmul(&m.tr()).linalg_eigvalsh("L").max().sqrt().double_value(&[]);
        assert!((s - 1.0).abs() < 1e-4, "{s}");
        // Gradients reach weight_orig only; the buffers are not trained.
        let names: Vec<String> = {
            let mut n: Vec<String> = vs.variables().into_keys().collect();
            n.sort();
            n
        };
        assert_eq!(names, ["weight_orig", "weight_u", "weight_v"]);
        assert_eq!(vs.trainable_variables().len(), 1);
        // Evaluation does not move the vectors.
        let u = vs.variables()["weight_u"].copy();
        let _ = sn.weight(false);
        assert!(u.equal(&vs.variables()["weight_u"]));
    }
}
