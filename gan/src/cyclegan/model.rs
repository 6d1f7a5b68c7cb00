//! The CycleGAN networks, after `models/networks.py` of junyanz/pytorch-CycleGAN-and-pix2pix
//! (`ResnetGenerator`, `ResnetBlock`, `NLayerDiscriminator`) with instance normalisation
//! (`--norm instance`: no affine parameters, so convolutions carry biases) and no dropout.
//!
//! Parameter names are the reference's `nn.Sequential` indices (`model.1.weight`,
//! `model.10.conv_block.1.weight`, ...), so a `latest_net_G_A.pth` / `latest_net_D_A.pth` state
//! dict of the same size loads without renaming.
use crate::error::{GanError, Result};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::Tensor;

/// Sizes of the two generators and two discriminators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CycleGanConfig {
    /// Image channels of both domains.
    pub channels: i64,
    /// Generator base width (`--ngf`, paper 64).
    pub ngf: i64,
    /// Residual blocks (`resnet_9blocks` for 256x256, `resnet_6blocks` for 128x128).
    pub n_blocks: i64,
    /// Discriminator base width (`--ndf`, paper 64).
    pub ndf: i64,
    /// Stride-2 layers of the PatchGAN (3: the 70x70 PatchGAN).
    pub n_layers_d: i64,
}

impl Default for CycleGanConfig {
    /// The paper's networks for 256x256 RGB: 9 blocks, 64 features, the 70x70 PatchGAN.
    fn default() -> Self {
        CycleGanConfig { channels: 3, ngf: 64, n_blocks: 9, ndf: 64, n_layers_d: 3 }
    }
}

impl CycleGanConfig {
    pub fn validate(&self) -> Result<()> {
        if self.channels < 1 || self.ngf < 1 || self.ndf < 1 || self.n_blocks < 0 || self.n_layers_d < 1 {
            return Err(GanError::Config(format!(
                "CycleGAN networks need channels, ngf, ndf, n_layers_d >= 1 and n_blocks >= 0; got {self:?}"
            )));
        }
        Ok(())
    }

    /// Side of the discriminator's patch map for an input side `side` (30 for 256 and 3 layers).
    pub fn patch_side(&self, side: i64) -> i64 {
        let mut s = side;
        for _ in 0..self.n_layers_d {
            s = (s + 2 - 4).div_euclid(2) + 1;
        }
        s - 2
    }

    /// Check that images of `[channels, h, w]` go through the networks with their shape kept
    /// (sides divisible by 4) and leave a patch map of at least 1x1.
    pub fn check_image_shape(&self, shape: [i64; 3]) -> Result<()> {
        let [c, h, w] = shape;
        if c != self.channels {
            return Err(GanError::Config(format!(
                "the images have {c} channels but the CycleGAN networks are built for {}",
                self.channels
            )));
        }
        if h % 4 != 0 || w % 4 != 0 {
            return Err(GanError::Config(format!(
                "the ResNet generator halves the image twice and doubles it back: sides must be multiples of 4, got {h}x{w}"
            )));
        }
        let (ph, pw) = (self.patch_side(h), self.patch_side(w));
        if ph < 1 || pw < 1 {
            return Err(GanError::Config(format!(
                "a {}-layer PatchGAN leaves a {ph}x{pw} map for {h}x{w} images; use fewer discriminator layers",
                self.n_layers_d
            )));
        }
        Ok(())
    }
}

/// `init_weights(net, 'normal', 0.02)`: convolution weights N(0, 0.02), biases 0.
fn conv(p: nn::Path<'_>, i: i64, o: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding,
        ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.02 },
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    };
    nn::conv2d(p, i, o, k, cfg)
}

fn instance_norm(x: &Tensor) -> Tensor {
    Tensor::instance_norm(x, None::<Tensor>, None::<Tensor>, None::<Tensor>, None::<Tensor>, true, 0.1, 1e-5, false)
}

fn reflect(x: &Tensor, p: i64) -> Tensor {
    x.reflection_pad2d([p, p, p, p])
}

/// `ResnetBlock`: x + (pad, conv3x3, norm, ReLU, pad, conv3x3, norm)(x).
#[derive(Debug)]
struct ResnetBlock {
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
}

impl ResnetBlock {
    fn new(p: nn::Path<'_>, dim: i64) -> Self {
        let cb = &p / "conv_block";
        ResnetBlock { conv1: conv(&cb / "1", dim, dim, 3, 1, 0), conv2: conv(&cb / "5", dim, dim, 3, 1, 0) }
    }
}

impl Module for ResnetBlock {
    fn forward(&self, x: &Tensor) -> Tensor {
        let h = instance_norm(&reflect(x, 1).apply(&self.conv1)).relu();
        let h = instance_norm(&reflect(&h, 1).apply(&self.conv2));
        x + h
    }
}

/// The ResNet generator: c7s1-ngf, d(2 ngf), d(4 ngf), `n_blocks` x R(4 ngf), u(2 ngf), u(ngf),
/// c7s1-channels, tanh.
#[derive(Debug)]
pub struct ResnetGenerator {
    pub cfg: CycleGanConfig,
    stem: nn::Conv2D,
    down: Vec<nn::Conv2D>,
    blocks: Vec<ResnetBlock>,
    up: Vec<nn::ConvTranspose2D>,
    head: nn::Conv2D,
}

impl ResnetGenerator {
    pub fn new(vs: nn::Path<'_>, cfg: CycleGanConfig) -> Result<Self> {
        cfg.validate()?;
        let (c, ngf) = (cfg.channels, cfg.ngf);
        let m = &vs / "model";
        let stem = conv(&m / "1", c, ngf, 7, 1, 0);
        let down = vec![conv(&m / "4", ngf, 2 * ngf, 3, 2, 1), conv(&m / "7", 2 * ngf, 4 * ngf, 3, 2, 1)];
        let blocks = (0..cfg.n_blocks).map(|i| ResnetBlock::new(&m / (10 + i).to_string(), 4 * ngf)).collect();
        let b = 10 + cfg.n_blocks;
        let tcfg = nn::ConvTransposeConfig {
            stride: 2,
            padding: 1,
            output_padding: 1,
            ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.02 },
            bs_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        let up = vec![
            nn::conv_transpose2d(&m / b.to_string(), 4 * ngf, 2 * ngf, 3, tcfg),
            nn::conv_transpose2d(&m / (b + 3).to_string(), 2 * ngf, ngf, 3, tcfg),
        ];
        let head = conv(&m / (b + 7).to_string(), ngf, c, 7, 1, 0);
        Ok(ResnetGenerator { cfg, stem, down, blocks, up, head })
    }

    /// # Shapes
    /// - `x`: [batch, channels, h, w] in [-1, 1], h and w multiples of 4 -> [batch, channels, h, w] in [-1, 1]
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = x.size();
        if s.len() != 4 || s[1] != self.cfg.channels || s[2] % 4 != 0 || s[3] % 4 != 0 {
            return Err(GanError::Config(format!(
                "the CycleGAN generator takes [batch, {}, h, w] with h and w multiples of 4, got {s:?}",
                self.cfg.channels
            )));
        }
        let mut h = instance_norm(&reflect(x, 3).apply(&self.stem)).relu();
        for d in &self.down {
            h = instance_norm(&h.apply(d)).relu();
        }
        for b in &self.blocks {
            h = b.forward(&h);
        }
        for u in &self.up {
            h = instance_norm(&h.apply(u)).relu();
        }
        Ok(reflect(&h, 3).apply(&self.head).tanh())
    }
}

/// The PatchGAN discriminator (`NLayerDiscriminator`): 4x4 convolutions, `n_layers_d` of stride
/// 2, one of stride 1, and a 1-channel stride-1 output; instance norm after all but the first
/// and the last, LeakyReLU(0.2). With 3 layers each output sees a 70x70 patch.
#[derive(Debug)]
pub struct NLayerDiscriminator {
    pub cfg: CycleGanConfig,
    convs: Vec<nn::Conv2D>,
}

impl NLayerDiscriminator {
    pub fn new(vs: nn::Path<'_>, cfg: CycleGanConfig) -> Result<Self> {
        cfg.validate()?;
        let m = &vs / "model";
        let (ndf, n) = (cfg.ndf, cfg.n_layers_d);
        let mut convs = vec![conv(&m / "0", cfg.channels, ndf, 4, 2, 1)];
        let mut mult = 1;
        for i in 1..n {
            let prev = mult;
            mult = (1 << i).min(8);
            convs.push(conv(&m / (2 + 3 * (i - 1)).to_string(), ndf * prev, ndf * mult, 4, 2, 1));
        }
        let prev = mult;
        mult = (1 << n).min(8);
        convs.push(conv(&m / (2 + 3 * (n - 1)).to_string(), ndf * prev, ndf * mult, 4, 1, 1));
        convs.push(conv(&m / (5 + 3 * (n - 1)).to_string(), ndf * mult, 1, 4, 1, 1));
        Ok(NLayerDiscriminator { cfg, convs })
    }

    /// # Shapes
    /// - `x`: [batch, channels, h, w] -> [batch, 1, ph, pw], with `ph = cfg.patch_side(h)`
    ///   (30x30 for 256x256 and 3 layers)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = x.size();
        if s.len() != 4 || s[1] != self.cfg.channels || self.cfg.patch_side(s[2]) < 1 || self.cfg.patch_side(s[3]) < 1 {
            return Err(GanError::Config(format!(
                "the {}-layer PatchGAN takes [batch, {}, h, w] large enough for a 1x1 map, got {s:?}",
                self.cfg.n_layers_d, self.cfg.channels
            )));
        }
        let last = self.convs.len() - 1;
        let mut h = x.shallow_clone();
        for (i, c) in self.convs.iter().enumerate() {
            h = h.apply(c);
            if i == last {
                break;
            }
            if i > 0 {
                h = instance_norm(&h);
            }
            h = h.maximum(&(&h * 0.2));
        }
        Ok(h)
    }
}
