//! Variational autoencoders (Kingma & Welling 2013, arXiv 1312.6114): an MLP VAE and a
//! convolutional VAE, with a Bernoulli or Gaussian decoder.
//!
//! The encoder outputs the mean and log-variance of a diagonal Gaussian posterior; the
//! decoder outputs per-pixel Bernoulli logits or Gaussian means (with a fixed or a
//! learned per-pixel log-variance).
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::error::{Result, VaeError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Mlp,
    Conv,
}

/// The decoder's likelihood p(x | z).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Likelihood {
    /// Pixels in [0, 1] as Bernoulli probabilities (binarised-MNIST convention).
    Bernoulli,
    /// Pixels in [-1, 1] as Gaussian means with a fixed log-variance, or a learned per-pixel one.
    Gaussian { log_var: f64, learned: bool },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaeConfig {
    pub arch: Arch,
    /// [channels, height, width] of the images.
    pub image_shape: [i64; 3],
    pub latent_dim: i64,
    /// MLP: hidden layer widths. Conv: channels of the stride-2 conv stages.
    pub widths: Vec<i64>,
    pub likelihood: Likelihood,
    /// beta-VAE weight on the KL term (Higgins et al. 2017); 1 is the plain ELBO.
    pub beta: f64,
    /// Linearly raise the KL weight from 0 to `beta` over this many steps (0: no warm-up).
    pub kl_warmup_steps: u64,
    /// Class-conditional VAE (Sohn et al. 2015): one-hot labels join encoder and decoder inputs.
    pub num_classes: Option<i64>,
}

impl Default for VaeConfig {
    /// The MLP VAE of Kingma & Welling for 28x28 grey images (hidden width 400, latent 20 here).
    fn default() -> Self {
        VaeConfig {
            arch: Arch::Mlp,
            image_shape: [1, 28, 28],
            latent_dim: 20,
            widths: vec![400],
            likelihood: Likelihood::Bernoulli,
            beta: 1.0,
            kl_warmup_steps: 0,
            num_classes: None,
        }
    }
}

impl VaeConfig {
    /// Named presets for `--model`.
    pub fn preset(name: &str, image_shape: [i64; 3]) -> Result<Self> {
        let base = VaeConfig { image_shape, ..Default::default() };
        Ok(match name {
            "mlp" => base,
            "conv" => VaeConfig { arch: Arch::Conv, widths: vec![32, 64], latent_dim: 16, ..base },
            "conv-large" => VaeConfig { arch: Arch::Conv, widths: vec![64, 128, 256], latent_dim: 64, ..base },
            "beta-vae" => VaeConfig {
                arch: Arch::Conv,
                widths: vec![32, 64],
                latent_dim: 10,
                beta: 4.0,
                kl_warmup_steps: 1000,
                ..base
            },
            "cvae" => VaeConfig { num_classes: Some(10), ..base },
            // Gaussian decoder with a learned per-pixel log-variance (starting at variance e^-2).
            "conv-gaussian" => VaeConfig {
                arch: Arch::Conv,
                widths: vec![32, 64],
                latent_dim: 16,
                likelihood: Likelihood::Gaussian { log_var: -2.0, learned: true },
                ..base
            },
            _ => {
                return Err(VaeError::Config(format!(
                    "unknown VAE preset `{name}`: expected mlp, conv, conv-large, beta-vae, cvae or conv-gaussian"
                )))
            }
        })
    }

    pub fn validate(&self) -> Result<()> {
        let [c, h, w] = self.image_shape;
        if c <= 0
            || h <= 0
            || w <= 0
            || self.latent_dim <= 0
            || self.widths.is_empty()
            || self.widths.iter().any(|&x| x <= 0)
        {
            return Err(VaeError::Config(format!(
                "invalid VAE sizes: image {:?}, latent {}, widths {:?}",
                self.image_shape, self.latent_dim, self.widths
            )));
        }
        if self.arch == Arch::Conv {
            let f = 1i64 << self.widths.len();
            if h % f != 0 || w % f != 0 {
                return Err(VaeError::Config(format!(
                    "the conv VAE with {} stages needs height and width divisible by {f}; got {h}x{w}",
                    self.widths.len()
                )));
            }
        }
        if self.beta < 0.0 {
            return Err(VaeError::Config(format!("beta must be >= 0, got {}", self.beta)));
        }
        Ok(())
    }

    pub fn data_dim(&self) -> i64 {
        self.image_shape.iter().product()
    }
}

enum Net {
    Mlp { enc: nn::Sequential, dec: nn::Sequential },
    Conv { enc: nn::Sequential, dec_fc: nn::Linear, dec: nn::Sequential, feat: [i64; 3] },
}

/// A VAE. Parameters live under `encoder.*`, `fc_mu`, `fc_logvar`, `decoder.*` (and `log_var`
/// for a learned Gaussian variance).
pub struct Vae {
    pub cfg: VaeConfig,
    net: Net,
    fc_mu: nn::Linear,
    fc_logvar: nn::Linear,
    log_var: Option<Tensor>,
    device: tch::Device,
}

impl std::fmt::Debug for Vae {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vae").field("cfg", &self.cfg).finish()
    }
}

impl Vae {
    pub fn new(vs: nn::Path<'_>, cfg: VaeConfig) -> Result<Self> {
        cfg.validate()?;
        let [c, h, w] = cfg.image_shape;
        let y = cfg.num_classes.unwrap_or(0);
        let z = cfg.latent_dim;
        let enc_p = &vs / "encoder";
        let dec_p = &vs / "decoder";
        let (net, feat_dim) = match cfg.arch {
            Arch::Mlp => {
                let mut enc = nn::seq();
                let mut d = cfg.data_dim() + y;
                for (i, &wd) in cfg.widths.iter().enumerate() {
                    enc = enc.add(nn::linear(&enc_p / i, d, wd, Default::default())).add_fn(|x| x.relu());
                    d = wd;
                }
                let mut dec = nn::seq();
                let mut d2 = z + y;
                for (i, &wd) in cfg.widths.iter().rev().enumerate() {
                    dec = dec.add(nn::linear(&dec_p / i, d2, wd, Default::default())).add_fn(|x| x.relu());
                    d2 = wd;
                }
                dec = dec.add(nn::linear(&dec_p / cfg.widths.len(), d2, cfg.data_dim(), Default::default()));
                (Net::Mlp { enc, dec }, d)
            }
            Arch::Conv => {
                let down = nn::ConvConfig { stride: 2, padding: 1, ..Default::default() };
                let mut enc = nn::seq();
                let mut ch = c + y;
                for (i, &wd) in cfg.widths.iter().enumerate() {
                    enc = enc.add(nn::conv2d(&enc_p / i, ch, wd, 4, down)).add_fn(|x| x.silu());
                    ch = wd;
                }
                let f = 1i64 << cfg.widths.len();
                let feat = [ch, h / f, w / f];
                enc = enc.add_fn(|x| x.flatten(1, -1));
                let feat_dim = feat.iter().product::<i64>();
                let dec_fc = nn::linear(&vs / "decoder_fc", z + y, feat_dim, Default::default());
                let up = nn::ConvTransposeConfig { stride: 2, padding: 1, ..Default::default() };
                let mut dec = nn::seq();
                let rev: Vec<i64> = cfg.widths.iter().rev().copied().collect();
                for (i, &wd) in rev.iter().enumerate() {
                    let out = if i + 1 < rev.len() { rev[i + 1] } else { c };
                    dec = dec.add(nn::conv_transpose2d(&dec_p / i, wd, out, 4, up));
                    if i + 1 < rev.len() {
                        dec = dec.add_fn(|x| x.silu());
                    }
                }
                (Net::Conv { enc, dec_fc, dec, feat }, feat_dim)
            }
        };
        let fc_mu = nn::linear(&vs / "fc_mu", feat_dim, z, Default::default());
        let fc_logvar = nn::linear(&vs / "fc_logvar", feat_dim, z, Default::default());
        let log_var = match cfg.likelihood {
            Likelihood::Gaussian { log_var, learned: true } => {
                Some(vs.var("log_var", &[c, h, w], nn::Init::Const(log_var)))
            }
            _ => None,
        };
        Ok(Vae { cfg, net, fc_mu, fc_logvar, log_var, device: vs.device() })
    }

    pub fn device(&self) -> tch::Device {
        self.device
    }

    fn one_hot(&self, labels: Option<&Tensor>, n: i64) -> Result<Option<Tensor>> {
        match (self.cfg.num_classes, labels) {
            (None, _) => Ok(None),
            (Some(k), Some(l)) => {
                let max = l.max().int64_value(&[]);
                let min = l.min().int64_value(&[]);
                if min < 0 || max >= k {
                    return Err(VaeError::Config(format!("labels must be in 0..{k}, found {min}..={max}")));
                }
                Ok(Some(l.one_hot(k).to_kind(Kind::Float)))
            }
            (Some(_), None) if n == 0 => Ok(None),
            (Some(k), None) => {
                Err(VaeError::Config(format!("this is a class-conditional VAE ({k} classes): labels are required")))
            }
        }
    }

    fn check_images(&self, x: &Tensor) -> Result<()> {
        let s = x.size();
        if s.len() != 4 || s[1..] != self.cfg.image_shape {
            return Err(VaeError::Shape(format!(
                "this model was built for images {:?}, got a batch {s:?}",
                self.cfg.image_shape
            )));
        }
        Ok(())
    }

    /// Posterior parameters.
    ///
    /// # Shapes
    /// - `x`: [batch, c, h, w] in [-1, 1]; `labels`: [batch] (conditional models)
    /// - returns (`mu`, `logvar`), each [batch, latent_dim]
    pub fn encode(&self, x: &Tensor, labels: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        self.check_images(x)?;
        let n = x.size()[0];
        let y = self.one_hot(labels, n)?;
        let h = match &self.net {
            Net::Mlp { enc, .. } => {
                let flat = x.flatten(1, -1);
                let inp = match &y {
                    Some(y) => Tensor::cat(&[flat, y.shallow_clone()], 1),
                    None => flat,
                };
                enc.forward(&inp)
            }
            Net::Conv { enc, .. } => {
                let inp = match &y {
                    Some(y) => {
                        let [_, h, w] = self.cfg.image_shape;
                        let k = y.size()[1];
                        Tensor::cat(&[x.shallow_clone(), y.view([n, k, 1, 1]).expand([n, k, h, w], false)], 1)
                    }
                    None => x.shallow_clone(),
                };
                enc.forward(&inp)
            }
        };
        Ok((self.fc_mu.forward(&h), self.fc_logvar.forward(&h)))
    }

    /// Decoder output: Bernoulli logits or Gaussian means, image-shaped.
    ///
    /// # Shapes
    /// - `z`: [batch, latent_dim]; `labels`: [batch] -> [batch, c, h, w]
    pub fn decode(&self, z: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        let n = z.size()[0];
        let y = self.one_hot(labels, n)?;
        let inp = match y {
            Some(y) => Tensor::cat(&[z.shallow_clone(), y], 1),
            None => z.shallow_clone(),
        };
        let [c, h, w] = self.cfg.image_shape;
        Ok(match &self.net {
            Net::Mlp { dec, .. } => dec.forward(&inp).view([n, c, h, w]),
            Net::Conv { dec_fc, dec, feat, .. } => {
                dec.forward(&dec_fc.forward(&inp).silu().view([n, feat[0], feat[1], feat[2]]))
            }
        })
    }

    /// The decoder's log-variance for a Gaussian likelihood ([c, h, w] or scalar).
    pub fn decoder_log_var(&self) -> Option<Tensor> {
        match self.cfg.likelihood {
            Likelihood::Bernoulli => None,
            Likelihood::Gaussian { log_var, .. } => {
                Some(self.log_var.as_ref().map(|t| t.shallow_clone()).unwrap_or_else(|| Tensor::from(log_var)))
            }
        }
    }

    /// Map decoder output to an image in [-1, 1] (the mean of p(x | z)).
    ///
    /// # Shapes
    /// - `out`: [batch, c, h, w] -> [batch, c, h, w]
    pub fn output_to_image(&self, out: &Tensor) -> Tensor {
        match self.cfg.likelihood {
            Likelihood::Bernoulli => out.sigmoid() * 2.0 - 1.0,
            Likelihood::Gaussian { .. } => out.clamp(-1.0, 1.0),
        }
    }
}

/// Reparameterised sample `mu + exp(logvar / 2) * eps`.
///
/// # Shapes
/// - `mu`, `logvar`: [batch, latent] -> [batch, latent]
pub fn reparameterize(mu: &Tensor, logvar: &Tensor) -> Tensor {
    mu + (logvar * 0.5).exp() * mu.randn_like()
}
