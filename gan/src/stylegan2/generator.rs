//! The StyleGAN2 generator: the mapping network z -> w with its tracked mean `w_avg`, and the
//! skip-architecture synthesis network (learned 4x4 constant, modulated 3x3 convolutions with
//! per-layer noise, one toRGB per resolution summed into the upsampled image).
//!
//! Follows stylegan2-ada-pytorch `training/networks.py` (`MappingNetwork`, `SynthesisLayer`,
//! `ToRGBLayer`, `SynthesisBlock` with `architecture='skip'`, `SynthesisNetwork`, `Generator`);
//! VarStore paths use its parameter names (`mapping.fc0.weight`, `synthesis.b8.conv0.affine.bias`,
//! `synthesis.b4.const`, ...). Class conditioning (`c_dim`) is not implemented.
use crate::error::{GanError, Result};
use crate::stylegan2::config::StyleGan2Config;
use crate::stylegan2::layers::{
    bias_act, modulated_conv2d, normalize_2nd_moment, setup_filter, upsample2d, Activation, FcConfig,
    FullyConnectedLayer, Resample,
};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Init, Kind, Tensor};

/// Where a synthesis layer's noise comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoiseMode {
    /// Fresh N(0, 1) per sample and pixel (training).
    Random,
    /// The layer's fixed `noise_const` buffer (reproducible images).
    Const,
    /// No noise.
    None,
}

/// `MappingNetwork`: normalise z to unit second moment, `num_layers` dense layers with leaky
/// ReLU and learning-rate multiplier, broadcast to `num_ws` copies.
#[derive(Debug)]
pub struct MappingNetwork {
    fcs: Vec<FullyConnectedLayer>,
    /// The running mean of w (a buffer, not trained), for truncation.
    pub w_avg: Tensor,
    z_dim: i64,
    num_ws: i64,
    w_avg_beta: f64,
}

impl MappingNetwork {
    pub fn new(vs: nn::Path<'_>, cfg: &StyleGan2Config) -> Self {
        let m = &cfg.mapping;
        let fc = FcConfig { activation: Activation::Lrelu, lr_multiplier: m.lr_multiplier, ..Default::default() };
        let fcs = (0..m.num_layers)
            .map(|i| {
                let fin = if i == 0 { cfg.z_dim } else { cfg.w_dim };
                FullyConnectedLayer::new(&vs / format!("fc{i}"), fin, cfg.w_dim, fc)
            })
            .collect();
        let w_avg = vs.zeros_no_train("w_avg", &[cfg.w_dim]);
        MappingNetwork { fcs, w_avg, z_dim: cfg.z_dim, num_ws: cfg.num_ws(), w_avg_beta: m.w_avg_beta }
    }

    /// `update_w_avg`: move `w_avg` toward this batch's mean w (training forward passes).
    ///
    /// # Shapes
    /// - `z`: [n, z_dim] -> [n, num_ws, w_dim]
    pub fn forward(&self, z: &Tensor, update_w_avg: bool) -> Result<Tensor> {
        let s = z.size();
        if s.len() != 2 || s[1] != self.z_dim {
            return Err(GanError::Config(format!(
                "mapping network: expected z of shape [n, {}], got {s:?}",
                self.z_dim
            )));
        }
        let mut x = normalize_2nd_moment(&z.to_kind(Kind::Float));
        for fc in &self.fcs {
            x = fc.forward(&x);
        }
        if update_w_avg {
            tch::no_grad(|| {
                let mean = x.detach().mean_dim(0, false, Kind::Float);
                let new = mean.lerp(&self.w_avg, self.w_avg_beta);
                self.w_avg.shallow_clone().copy_(&new);
            });
        }
        Ok(x.unsqueeze(1).repeat([1, self.num_ws, 1]))
    }
}

/// `SynthesisLayer`: a modulated, demodulated convolution (2x upsampling for a block's first
/// layer) whose styles come from an affine map of w (biases initialised to 1), plus scaled
/// noise, bias and leaky ReLU.
#[derive(Debug)]
pub struct SynthesisLayer {
    affine: FullyConnectedLayer,
    pub weight: Tensor,
    noise_const: Option<Tensor>,
    pub noise_strength: Option<Tensor>,
    bias: Tensor,
    resample: Resample,
    resolution: i64,
    padding: i64,
    resample_filter: Tensor,
}

impl SynthesisLayer {
    pub fn new(
        vs: nn::Path<'_>,
        in_channels: i64,
        out_channels: i64,
        w_dim: i64,
        resolution: i64,
        up: bool,
        use_noise: bool,
        resample_filter: &Tensor,
    ) -> Self {
        let kernel_size = 3;
        let affine = FullyConnectedLayer::new(
            &vs / "affine",
            w_dim,
            in_channels,
            FcConfig { bias_init: 1.0, ..Default::default() },
        );
        let weight = vs.var(
            "weight",
            &[out_channels, in_channels, kernel_size, kernel_size],
            Init::Randn { mean: 0.0, stdev: 1.0 },
        );
        let (noise_const, noise_strength) = if use_noise {
            let nc = vs.zeros_no_train("noise_const", &[resolution, resolution]);
            tch::no_grad(|| {
                nc.shallow_clone().copy_(&Tensor::randn([resolution, resolution], (Kind::Float, nc.device())))
            });
            (Some(nc), Some(vs.zeros("noise_strength", &[])))
        } else {
            (None, None)
        };
        let bias = vs.zeros("bias", &[out_channels]);
        SynthesisLayer {
            affine,
            weight,
            noise_const,
            noise_strength,
            bias,
            resample: if up { Resample::Up } else { Resample::None },
            resolution,
            padding: kernel_size / 2,
            resample_filter: resample_filter.shallow_clone(),
        }
    }

    /// # Shapes
    /// - `x`: [n, in, r, r] (r = resolution, or resolution / 2 when upsampling); `w`: [n, w_dim]
    ///   -> [n, out, resolution, resolution]
    pub fn forward(
        &self,
        x: &Tensor,
        w: &Tensor,
        noise_mode: NoiseMode,
        fused_modconv: bool,
        gain: f64,
    ) -> Result<Tensor> {
        let styles = self.affine.forward(w);
        let n = x.size()[0];
        let r = self.resolution;
        let noise = match (&self.noise_strength, &self.noise_const, noise_mode) {
            (Some(s), _, NoiseMode::Random) => Some(Tensor::randn([n, 1, r, r], (Kind::Float, x.device())) * s),
            (Some(s), Some(c), NoiseMode::Const) => Some(c * s),
            _ => None,
        };
        let flip_weight = self.resample == Resample::None;
        let x = modulated_conv2d(
            x,
            &self.weight,
            &styles,
            noise.as_ref(),
            self.resample,
            self.padding,
            Some(&self.resample_filter),
            true,
            flip_weight,
            fused_modconv,
        )?;
        let b = self.bias.to_kind(x.kind());
        Ok(bias_act(&x, Some(&b), Activation::Lrelu, Activation::Lrelu.def_gain() * gain))
    }
}

/// `ToRGBLayer`: a modulated 1x1 convolution without demodulation, plus bias.
#[derive(Debug)]
pub struct ToRGBLayer {
    affine: FullyConnectedLayer,
    pub weight: Tensor,
    bias: Tensor,
    weight_gain: f64,
}

impl ToRGBLayer {
    pub fn new(vs: nn::Path<'_>, in_channels: i64, out_channels: i64, w_dim: i64) -> Self {
        let affine = FullyConnectedLayer::new(
            &vs / "affine",
            w_dim,
            in_channels,
            FcConfig { bias_init: 1.0, ..Default::default() },
        );
        let weight = vs.var("weight", &[out_channels, in_channels, 1, 1], Init::Randn { mean: 0.0, stdev: 1.0 });
        let bias = vs.zeros("bias", &[out_channels]);
        ToRGBLayer { affine, weight, bias, weight_gain: 1.0 / (in_channels as f64).sqrt() }
    }

    /// # Shapes
    /// - `x`: [n, in, r, r]; `w`: [n, w_dim] -> [n, img_channels, r, r]
    pub fn forward(&self, x: &Tensor, w: &Tensor, fused_modconv: bool) -> Result<Tensor> {
        let styles = self.affine.forward(w) * self.weight_gain;
        let x = modulated_conv2d(x, &self.weight, &styles, None, Resample::None, 0, None, false, true, fused_modconv)?;
        let b = self.bias.to_kind(x.kind());
        Ok(bias_act(&x, Some(&b), Activation::Linear, 1.0))
    }
}

/// `SynthesisBlock` (skip architecture): the learned constant (first block) or a 2x upsampling
/// layer, a second layer, and a toRGB whose output is added to the upsampled image so far.
#[derive(Debug)]
pub struct SynthesisBlock {
    pub resolution: i64,
    const_: Option<Tensor>,
    conv0: Option<SynthesisLayer>,
    conv1: SynthesisLayer,
    torgb: ToRGBLayer,
    resample_filter: Tensor,
    /// Modulated convolutions in this block (1 for the first, else 2).
    pub num_conv: i64,
    /// toRGB layers in this block (1).
    pub num_torgb: i64,
}

impl SynthesisBlock {
    /// `in_channels` 0: the first block, which starts from the learned constant.
    pub fn new(
        vs: nn::Path<'_>,
        in_channels: i64,
        out_channels: i64,
        resolution: i64,
        cfg: &StyleGan2Config,
        resample_filter: &Tensor,
    ) -> Self {
        let w_dim = cfg.w_dim;
        let const_ = (in_channels == 0)
            .then(|| vs.var("const", &[out_channels, resolution, resolution], Init::Randn { mean: 0.0, stdev: 1.0 }));
        let conv0 = (in_channels != 0).then(|| {
            SynthesisLayer::new(
                &vs / "conv0",
                in_channels,
                out_channels,
                w_dim,
                resolution,
                true,
                cfg.use_noise,
                resample_filter,
            )
        });
        let conv1 = SynthesisLayer::new(
            &vs / "conv1",
            out_channels,
            out_channels,
            w_dim,
            resolution,
            false,
            cfg.use_noise,
            resample_filter,
        );
        let torgb = ToRGBLayer::new(&vs / "torgb", out_channels, cfg.img_channels(), w_dim);
        let num_conv = if conv0.is_some() { 2 } else { 1 };
        SynthesisBlock {
            resolution,
            const_,
            conv0,
            conv1,
            torgb,
            resample_filter: resample_filter.shallow_clone(),
            num_conv,
            num_torgb: 1,
        }
    }

    /// # Shapes
    /// - `x`: [n, in, r/2, r/2] (None for the first block); `img`: [n, c, r/2, r/2] (None for the
    ///   first block); `ws`: [n, num_conv + num_torgb, w_dim] -> ([n, out, r, r], [n, c, r, r])
    pub fn forward(
        &self,
        x: Option<&Tensor>,
        img: Option<&Tensor>,
        ws: &Tensor,
        noise_mode: NoiseMode,
        fused_modconv: bool,
    ) -> Result<(Tensor, Tensor)> {
        let n = ws.size()[0];
        let mut idx = 0;
        let mut next_w = || {
            let w = ws.select(1, idx);
            idx += 1;
            w
        };
        let x = match (&self.const_, &self.conv0, x) {
            (Some(c), _, _) => {
                let x = c.unsqueeze(0).repeat([n, 1, 1, 1]);
                self.conv1.forward(&x, &next_w(), noise_mode, fused_modconv, 1.0)?
            }
            (None, Some(conv0), Some(x)) => {
                let x = conv0.forward(x, &next_w(), noise_mode, fused_modconv, 1.0)?;
                self.conv1.forward(&x, &next_w(), noise_mode, fused_modconv, 1.0)?
            }
            _ => {
                return Err(GanError::Config(format!(
                    "synthesis block {0}x{0} needs the previous block's features",
                    self.resolution
                )))
            }
        };
        let y = self.torgb.forward(&x, &next_w(), fused_modconv)?.to_kind(Kind::Float);
        let img = match img {
            Some(img) => upsample2d(img, &self.resample_filter) + y,
            None => y,
        };
        Ok((x, img))
    }
}

/// `SynthesisNetwork`: the blocks 4x4 .. resolution; block `b{r}` reads `ws[:, i : i + num_conv + 1]`
/// where `i` counts the earlier blocks' convolutions (a toRGB shares its w with the next block's
/// first layer).
#[derive(Debug)]
pub struct SynthesisNetwork {
    blocks: Vec<SynthesisBlock>,
    pub num_ws: i64,
    w_dim: i64,
}

impl SynthesisNetwork {
    pub fn new(vs: nn::Path<'_>, cfg: &StyleGan2Config) -> Result<Self> {
        let f = setup_filter(&cfg.resample_filter, vs.device())?;
        let blocks = cfg
            .block_resolutions()
            .into_iter()
            .map(|res| {
                let in_channels = if res > 4 { cfg.channels(res / 2) } else { 0 };
                SynthesisBlock::new(&vs / format!("b{res}"), in_channels, cfg.channels(res), res, cfg, &f)
            })
            .collect();
        Ok(SynthesisNetwork { blocks, num_ws: cfg.num_ws(), w_dim: cfg.w_dim })
    }

    /// `fused_modconv`: the grouped-convolution form (stylegan2-ada-pytorch uses it outside
    /// training; both give the same numbers).
    ///
    /// # Shapes
    /// - `ws`: [n, num_ws, w_dim] -> [n, img_channels, resolution, resolution]
    pub fn forward(&self, ws: &Tensor, noise_mode: NoiseMode, fused_modconv: bool) -> Result<Tensor> {
        let s = ws.size();
        if s.len() != 3 || s[1] != self.num_ws || s[2] != self.w_dim {
            return Err(GanError::Config(format!(
                "synthesis network: expected ws of shape [n, {}, {}], got {s:?}",
                self.num_ws, self.w_dim
            )));
        }
        let ws = ws.to_kind(Kind::Float);
        let mut x: Option<Tensor> = None;
        let mut img: Option<Tensor> = None;
        let mut w_idx = 0;
        for block in &self.blocks {
            let cur = ws.narrow(1, w_idx, block.num_conv + block.num_torgb);
            w_idx += block.num_conv;
            let (nx, nimg) = block.forward(x.as_ref(), img.as_ref(), &cur, noise_mode, fused_modconv)?;
            x = Some(nx);
            img = Some(nimg);
        }
        img.ok_or_else(|| GanError::Config("synthesis network without blocks".into()))
    }
}

/// `w_avg + psi * (w - w_avg)`: pull latents toward the mean w, trading variety for typical
/// images (the truncation trick). `psi` must lie in [0, 1]: 0 gives `w_avg` itself, 1 the
/// latents unchanged; above 1 it pushes them away from the mean into regions the generator
/// rarely saw, below 0 it mirrors them through the mean.
///
/// # Shapes
/// - `w`: [n, w_dim] or [n, num_ws, w_dim]; `w_avg`: [w_dim] -> same as `w`
pub fn truncate(w: &Tensor, w_avg: &Tensor, psi: f64) -> Result<Tensor> {
    if !(0.0..=1.0).contains(&psi) {
        return Err(GanError::Config(format!(
            "truncation psi {psi} is outside [0, 1]: psi interpolates from the mean w (0) to the sampled w (1); \
             values above 1 extrapolate past the sample into latents the generator rarely saw"
        )));
    }
    let d = *w.size().last().unwrap_or(&0);
    if w_avg.size() != [d] {
        return Err(GanError::Config(format!("truncation: w_avg has shape {:?}, w ends in {d}", w_avg.size())));
    }
    Ok(w_avg.to_kind(w.kind()).lerp(w, psi))
}

/// `Generator`: mapping then synthesis.
#[derive(Debug)]
pub struct Generator {
    pub mapping: MappingNetwork,
    pub synthesis: SynthesisNetwork,
    pub cfg: StyleGan2Config,
}

impl Generator {
    pub fn new(vs: nn::Path<'_>, cfg: StyleGan2Config) -> Result<Self> {
        cfg.validate()?;
        let synthesis = SynthesisNetwork::new(&vs / "synthesis", &cfg)?;
        let mapping = MappingNetwork::new(&vs / "mapping", &cfg);
        Ok(Generator { mapping, synthesis, cfg })
    }

    pub fn num_ws(&self) -> i64 {
        self.synthesis.num_ws
    }

    /// Images at the network's resolution from latents `z`, truncated toward `w_avg` by `psi`
    /// (1: none; see [`truncate`]). `train`: update `w_avg` and use the
    /// per-sample (non-fused) modulation, as the reference does in training mode.
    ///
    /// # Shapes
    /// - `z`: [n, z_dim] -> [n, img_channels, resolution, resolution]
    pub fn forward(&self, z: &Tensor, psi: f64, noise_mode: NoiseMode, train: bool) -> Result<Tensor> {
        let ws = self.mapping.forward(z, train)?;
        let ws = if psi != 1.0 { truncate(&ws, &self.mapping.w_avg, psi)? } else { ws };
        self.synthesis.forward(&ws, noise_mode, !train)
    }
}
