//! SRGAN's networks (Ledig et al., "Photo-Realistic Single Image Super-Resolution Using a
//! Generative Adversarial Network", arXiv 1609.04802, figure 4).
//!
//! - [`SrGenerator`] (SRResNet): conv 9x9 + PReLU, `num_blocks` residual blocks
//!   (conv-BN-PReLU-conv-BN plus the input), conv 3x3 + BN added to the first layer's output
//!   (the long skip), one sub-pixel upsampling stage per factor of 2 (conv 3x3 to 4x the
//!   channels, pixel shuffle, PReLU; Shi et al., arXiv 1609.05158), and a final conv 9x9.
//! - [`SrDiscriminator`]: eight conv 3x3 layers with LeakyReLU(0.2), strides alternating 1, 2,
//!   channels doubling every second layer, BatchNorm on all but the first, then
//!   dense(`d_hidden`), LeakyReLU, dense(1). Its logits go to the loss (the paper's final
//!   sigmoid lives there). An adaptive average pool to `d_pool x d_pool` before the dense
//!   layers takes any input size; at the paper's 96x96 crops with `d_pool = 6` it is the identity.
//!
//! Parameter names follow `Lornatang/SRGAN-PyTorch` `model.py` (`SRResNet`: `conv1.0`, `conv1.1`,
//! `trunk.<i>.rcb.<j>`, `conv2.<j>`, `upsampling.<i>.upsample_block.<j>`, `conv3`;
//! `Discriminator`: `features.<j>`, `classifier.<j>`), so its state dicts load by name where the
//! sizes agree (it fixes the discriminator to 3 channels and 96x96 inputs). As there, the
//! generator's convolutions start from Kaiming-normal weights and zero biases. The generator
//! has no output nonlinearity (the reference clamps to its image range only for output):
//! [`crate::sr::upscale::upscale`] clamps to [-1, 1].
use crate::error::{GanError, Result};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, ModuleT};
use tch::Tensor;

/// Sizes of the SRGAN networks. The default is the paper's: x4, 64 channels, 16 residual
/// blocks, discriminator widths 64..512 and a 1024-unit dense layer, RGB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SrConfig {
    /// Image channels (1 grey, 3 RGB), the same for the low- and the high-resolution images.
    pub channels: i64,
    /// Upscaling factor: 2, 4 or 8 (one pixel-shuffle x2 stage per factor of 2).
    pub scale: i64,
    /// Generator feature channels.
    pub features: i64,
    /// Residual blocks in the generator's trunk (B in the paper).
    pub num_blocks: usize,
    /// Discriminator channels of its first two layers (64 in the paper; x2, x4, x8 after).
    pub d_channels: i64,
    /// Side of the discriminator's pooled feature map (6: the paper's 96x96 crops after four halvings).
    pub d_pool: i64,
    /// Units of the discriminator's hidden dense layer.
    pub d_hidden: i64,
}

impl Default for SrConfig {
    fn default() -> Self {
        SrConfig { channels: 3, scale: 4, features: 64, num_blocks: 16, d_channels: 64, d_pool: 6, d_hidden: 1024 }
    }
}

impl SrConfig {
    pub fn validate(&self) -> Result<()> {
        if !matches!(self.scale, 2 | 4 | 8) {
            return Err(GanError::Config(format!(
                "super-resolution scale must be 2, 4 or 8 (x2 pixel-shuffle stages), got {}",
                self.scale
            )));
        }
        if !matches!(self.channels, 1 | 3) {
            return Err(GanError::Config(format!(
                "super-resolution images must have 1 or 3 channels, got {}",
                self.channels
            )));
        }
        if self.features <= 0 || self.d_channels <= 0 || self.d_pool <= 0 || self.d_hidden <= 0 {
            return Err(GanError::Config(format!(
                "invalid SRGAN sizes: features {}, d_channels {}, d_pool {}, d_hidden {}",
                self.features, self.d_channels, self.d_pool, self.d_hidden
            )));
        }
        Ok(())
    }

    /// Pixel-shuffle x2 stages: log2(scale).
    pub fn stages(&self) -> u32 {
        self.scale.trailing_zeros()
    }
}

/// PReLU with one shared slope (`nn.PReLU()`: parameter `weight` of shape [1], initialised to 0.25).
#[derive(Debug)]
pub struct PRelu {
    weight: Tensor,
}

impl PRelu {
    pub fn new(vs: nn::Path<'_>) -> Self {
        PRelu { weight: vs.var("weight", &[1], nn::Init::Const(0.25)) }
    }
}

impl Module for PRelu {
    /// # Shapes
    /// - `xs`: any -> the same
    fn forward(&self, xs: &Tensor) -> Tensor {
        xs.prelu(&self.weight)
    }
}

fn conv(vs: nn::Path<'_>, c_in: i64, c_out: i64, kernel: i64, stride: i64, bias: bool, init: nn::Init) -> nn::Conv2D {
    let cfg = nn::ConvConfig { stride, padding: kernel / 2, bias, ws_init: init, ..Default::default() };
    nn::conv2d(vs, c_in, c_out, kernel, cfg)
}

fn leaky_relu(x: &Tensor) -> Tensor {
    genlab_core::layers::leaky_relu(x, 0.2)
}

/// One residual block: `x + BN(conv(PReLU(BN(conv(x)))))`, parameters `rcb.{0,1,2,3,4}`.
#[derive(Debug)]
struct ResidualBlock {
    rcb: nn::SequentialT,
}

impl ResidualBlock {
    fn new(vs: nn::Path<'_>, ch: i64) -> Self {
        let p = &vs / "rcb";
        let init = nn::init::DEFAULT_KAIMING_NORMAL;
        let rcb = nn::seq_t()
            .add(conv(&p / 0, ch, ch, 3, 1, false, init))
            .add(nn::batch_norm2d(&p / 1, ch, Default::default()))
            .add(PRelu::new(&p / 2))
            .add(conv(&p / 3, ch, ch, 3, 1, false, init))
            .add(nn::batch_norm2d(&p / 4, ch, Default::default()));
        ResidualBlock { rcb }
    }
}

impl ModuleT for ResidualBlock {
    /// # Shapes
    /// - `xs`: [batch, ch, h, w] -> [batch, ch, h, w]
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        xs + self.rcb.forward_t(xs, train)
    }
}

/// SRResNet, SRGAN's generator (see the module docs).
pub struct SrGenerator {
    pub cfg: SrConfig,
    conv1: nn::SequentialT,
    trunk: Vec<ResidualBlock>,
    conv2: nn::SequentialT,
    upsampling: nn::SequentialT,
    conv3: nn::Conv2D,
    device: tch::Device,
}

impl std::fmt::Debug for SrGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrGenerator").field("cfg", &self.cfg).finish()
    }
}

impl SrGenerator {
    pub fn new(vs: nn::Path<'_>, cfg: SrConfig) -> Result<Self> {
        cfg.validate()?;
        let (c, f) = (cfg.channels, cfg.features);
        let init = nn::init::DEFAULT_KAIMING_NORMAL;
        let p1 = &vs / "conv1";
        let conv1 = nn::seq_t().add(conv(&p1 / 0, c, f, 9, 1, true, init)).add(PRelu::new(&p1 / 1));
        let trunk = (0..cfg.num_blocks).map(|i| ResidualBlock::new(&vs / "trunk" / i, f)).collect();
        let p2 = &vs / "conv2";
        let bn2 = nn::batch_norm2d(&p2 / 1, f, Default::default());
        let conv2 = nn::seq_t().add(conv(&p2 / 0, f, f, 3, 1, false, init)).add(bn2);
        let mut upsampling = nn::seq_t();
        for i in 0..cfg.stages() {
            let p = &vs / "upsampling" / i / "upsample_block";
            upsampling = upsampling
                .add(conv(&p / 0, f, f * 4, 3, 1, true, init))
                .add_fn(|x| pixel_shuffle(x, 2))
                .add(PRelu::new(&p / 2));
        }
        let conv3 = conv(&vs / "conv3", f, c, 9, 1, true, init);
        Ok(SrGenerator { cfg, conv1, trunk, conv2, upsampling, conv3, device: vs.device() })
    }

    pub fn device(&self) -> tch::Device {
        self.device
    }

    /// Check that `x` is a batch of this generator's low-resolution images.
    pub fn check_images(&self, x: &Tensor) -> Result<()> {
        let s = x.size();
        if s.len() != 4 || s[1] != self.cfg.channels || s[2] < 1 || s[3] < 1 {
            return Err(GanError::Config(format!(
                "the super-resolution generator takes images [batch, {}, h, w], got a batch of shape {s:?}",
                self.cfg.channels
            )));
        }
        Ok(())
    }

    /// The high-resolution estimate of low-resolution images, unclamped. `train` selects
    /// BatchNorm's batch statistics (and updates its running averages).
    ///
    /// # Shapes
    /// - `x`: [batch, channels, h, w] in [-1, 1] -> [batch, channels, h * scale, w * scale]
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.check_images(x)?;
        let out1 = self.conv1.forward_t(x, train);
        let mut h = out1.shallow_clone();
        for block in &self.trunk {
            h = block.forward_t(&h, train);
        }
        let h = out1 + self.conv2.forward_t(&h, train);
        Ok(self.conv3.forward(&self.upsampling.forward_t(&h, train)))
    }
}

/// Sub-pixel rearrangement (`nn.PixelShuffle(r)`): channel `c * r^2 + i * r + j` of input pixel
/// `(y, x)` goes to output channel `c`, pixel `(y * r + i, x * r + j)`.
///
/// # Shapes
/// - `x`: [batch, c * r^2, h, w] -> [batch, c, h * r, w * r]
pub fn pixel_shuffle(x: &Tensor, r: i64) -> Tensor {
    x.pixel_shuffle(r)
}

/// SRGAN's discriminator (see the module docs).
pub struct SrDiscriminator {
    pub cfg: SrConfig,
    features: nn::SequentialT,
    classifier: nn::Sequential,
}

impl std::fmt::Debug for SrDiscriminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrDiscriminator").field("cfg", &self.cfg).finish()
    }
}

impl SrDiscriminator {
    pub fn new(vs: nn::Path<'_>, cfg: SrConfig) -> Result<Self> {
        cfg.validate()?;
        let fp = &vs / "features";
        let init = nn::init::DEFAULT_KAIMING_UNIFORM;
        let base = cfg.d_channels;
        let mut features = nn::seq_t().add(conv(&fp / 0, cfg.channels, base, 3, 1, true, init)).add_fn(leaky_relu);
        let mut ch = base;
        let mut idx = 2;
        // Layers 2..8 of the paper: (n64, s2), (n128, s1), (n128, s2), ..., (n512, s2).
        for layer in 1..8 {
            let out = base << (layer / 2);
            let stride = if layer % 2 == 1 { 2 } else { 1 };
            features = features
                .add(conv(&fp / idx, ch, out, 3, stride, false, init))
                .add(nn::batch_norm2d(&fp / (idx + 1), out, Default::default()))
                .add_fn(leaky_relu);
            ch = out;
            idx += 3;
        }
        let cp = &vs / "classifier";
        let classifier = nn::seq()
            .add(nn::linear(&cp / 0, ch * cfg.d_pool * cfg.d_pool, cfg.d_hidden, Default::default()))
            .add_fn(leaky_relu)
            .add(nn::linear(&cp / 2, cfg.d_hidden, 1, Default::default()));
        Ok(SrDiscriminator { cfg, features, classifier })
    }

    /// Logits, one per image (any height and width of at least 1).
    ///
    /// # Shapes
    /// - `x`: [batch, channels, h, w] -> [batch]
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let s = x.size();
        if s.len() != 4 || s[1] != self.cfg.channels {
            return Err(GanError::Config(format!(
                "the super-resolution discriminator takes images [batch, {}, h, w], got a batch of shape {s:?}",
                self.cfg.channels
            )));
        }
        let h = self.features.forward_t(x, train).adaptive_avg_pool2d([self.cfg.d_pool, self.cfg.d_pool]);
        Ok(self.classifier.forward(&h.flatten(1, -1)).view([s[0]]))
    }
}
