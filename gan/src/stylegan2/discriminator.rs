//! The StyleGAN2 residual discriminator: fromRGB at full resolution, one residual block per
//! halving down to 4x4 (two 3x3 convolutions, the second downsampling, plus a 1x1 downsampling
//! skip, summed with gains sqrt(0.5)), then the epilogue: minibatch standard deviation, a 3x3
//! convolution, a dense layer and the output logit.
//!
//! Follows stylegan2-ada-pytorch `training/networks.py` (`DiscriminatorBlock` with
//! `architecture='resnet'`, `MinibatchStdLayer`, `DiscriminatorEpilogue`, `Discriminator`);
//! VarStore paths use its names (`b32.fromrgb.weight`, `b16.skip.weight`, `b4.fc.bias`, ...).
use crate::error::{GanError, Result};
use crate::stylegan2::config::StyleGan2Config;
use crate::stylegan2::layers::{setup_filter, Activation, Conv2dLayer, FcConfig, FullyConnectedLayer, Resample};
use tch::{nn, Kind, Tensor};

/// `DiscriminatorBlock` (resnet): `(skip(x) + conv1(conv0(x))) * sqrt(0.5)`, halving the resolution.
#[derive(Debug)]
pub struct DiscriminatorBlock {
    pub resolution: i64,
    fromrgb: Option<Conv2dLayer>,
    conv0: Conv2dLayer,
    conv1: Conv2dLayer,
    skip: Conv2dLayer,
}

impl DiscriminatorBlock {
    /// `in_channels` 0: the first block, which reads the image through fromRGB.
    pub fn new(
        vs: nn::Path<'_>,
        in_channels: i64,
        tmp_channels: i64,
        out_channels: i64,
        resolution: i64,
        img_channels: i64,
        resample_filter: &Tensor,
    ) -> Self {
        let f = resample_filter;
        let lrelu = Activation::Lrelu;
        let fromrgb = (in_channels == 0)
            .then(|| Conv2dLayer::new(&vs / "fromrgb", img_channels, tmp_channels, 1, true, lrelu, Resample::None, f));
        let conv0 = Conv2dLayer::new(&vs / "conv0", tmp_channels, tmp_channels, 3, true, lrelu, Resample::None, f);
        let conv1 = Conv2dLayer::new(&vs / "conv1", tmp_channels, out_channels, 3, true, lrelu, Resample::Down, f);
        let skip =
            Conv2dLayer::new(&vs / "skip", tmp_channels, out_channels, 1, false, Activation::Linear, Resample::Down, f);
        DiscriminatorBlock { resolution, fromrgb, conv0, conv1, skip }
    }

    /// # Shapes
    /// - `x`: [n, tmp, r, r] (None for the first block); `img`: [n, c, r, r] -> [n, out, r/2, r/2]
    pub fn forward(&self, x: Option<&Tensor>, img: &Tensor) -> Result<Tensor> {
        let x = match (&self.fromrgb, x) {
            (Some(fromrgb), _) => fromrgb.forward(img, 1.0),
            (None, Some(x)) => x.shallow_clone(),
            (None, None) => {
                return Err(GanError::Config(format!(
                    "discriminator block {0}x{0} needs the previous block's features",
                    self.resolution
                )))
            }
        };
        let g = std::f64::consts::FRAC_1_SQRT_2;
        let y = self.skip.forward(&x, g);
        let x = self.conv0.forward(&x, 1.0);
        let x = self.conv1.forward(&x, g);
        Ok(y + x)
    }
}

/// `MinibatchStdLayer`: split the batch into groups of `group_size` (or the whole batch if
/// smaller) and the features into `num_channels` groups; append, for every sample, the
/// average over features and pixels of the standard deviation across its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinibatchStdLayer {
    pub group_size: i64,
    pub num_channels: i64,
}

impl MinibatchStdLayer {
    /// # Shapes
    /// - `x`: [n, c, h, w] -> [n, c + num_channels, h, w]
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.size4()?;
        let g = self.group_size.min(n);
        let f = self.num_channels;
        if g < 1 || n % g != 0 || f < 1 || c % f != 0 {
            return Err(GanError::Config(format!(
                "minibatch stddev: a batch of {n} cannot be split into groups of {g}, or {c} features into {f} \
                 groups; use a batch size divisible by the group size ({})",
                self.group_size
            )));
        }
        let y = x.reshape([g, -1, f, c / f, h, w]);
        let y = &y - y.mean_dim(0, false, Kind::Float);
        let y = y.square().mean_dim(0, false, Kind::Float);
        let y = (y + 1e-8).sqrt();
        let y = y.mean_dim([2i64, 3, 4].as_slice(), false, Kind::Float);
        let y = y.reshape([-1, f, 1, 1]).repeat([g, 1, h, w]).to_kind(x.kind());
        Ok(Tensor::cat(&[x, &y], 1))
    }
}

/// `DiscriminatorEpilogue`: minibatch stddev, 3x3 convolution, dense layer, output logit.
#[derive(Debug)]
pub struct DiscriminatorEpilogue {
    mbstd: Option<MinibatchStdLayer>,
    conv: Conv2dLayer,
    fc: FullyConnectedLayer,
    out: FullyConnectedLayer,
}

impl DiscriminatorEpilogue {
    pub fn new(vs: nn::Path<'_>, in_channels: i64, resolution: i64, cfg: &StyleGan2Config, f: &Tensor) -> Self {
        let mb = cfg.mbstd_num_channels;
        let mbstd = (mb > 0).then_some(MinibatchStdLayer { group_size: cfg.mbstd_group_size, num_channels: mb });
        let conv = Conv2dLayer::new(
            &vs / "conv",
            in_channels + mb,
            in_channels,
            3,
            true,
            Activation::Lrelu,
            Resample::None,
            f,
        );
        let fc = FullyConnectedLayer::new(
            &vs / "fc",
            in_channels * resolution * resolution,
            in_channels,
            FcConfig { activation: Activation::Lrelu, ..Default::default() },
        );
        let out = FullyConnectedLayer::new(&vs / "out", in_channels, 1, FcConfig::default());
        DiscriminatorEpilogue { mbstd, conv, fc, out }
    }

    /// # Shapes
    /// - `x`: [n, in, 4, 4] -> [n, 1]
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = match &self.mbstd {
            Some(m) => m.forward(x)?,
            None => x.shallow_clone(),
        };
        let x = self.conv.forward(&x, 1.0);
        let x = self.fc.forward(&x.flatten(1, -1));
        Ok(self.out.forward(&x))
    }
}

/// `Discriminator`: blocks `b{resolution}` .. `b8`, then the epilogue `b4`.
#[derive(Debug)]
pub struct Discriminator {
    blocks: Vec<DiscriminatorBlock>,
    b4: DiscriminatorEpilogue,
    pub cfg: StyleGan2Config,
}

impl Discriminator {
    pub fn new(vs: nn::Path<'_>, cfg: StyleGan2Config) -> Result<Self> {
        cfg.validate()?;
        let f = setup_filter(&cfg.resample_filter, vs.device())?;
        let r = cfg.resolution();
        let blocks = cfg
            .block_resolutions()
            .into_iter()
            .rev()
            .filter(|&res| res > 4)
            .map(|res| {
                let in_channels = if res < r { cfg.channels(res) } else { 0 };
                DiscriminatorBlock::new(
                    &vs / format!("b{res}"),
                    in_channels,
                    cfg.channels(res),
                    cfg.channels(res / 2),
                    res,
                    cfg.img_channels(),
                    &f,
                )
            })
            .collect();
        let b4 = DiscriminatorEpilogue::new(&vs / "b4", cfg.channels(4), 4, &cfg, &f);
        Ok(Discriminator { blocks, b4, cfg })
    }

    /// Logits (real: positive) for images at the network's resolution.
    ///
    /// # Shapes
    /// - `img`: [n, img_channels, resolution, resolution] -> [n, 1]
    pub fn forward(&self, img: &Tensor) -> Result<Tensor> {
        let r = self.cfg.resolution();
        let s = img.size();
        if s.len() != 4 || s[1] != self.cfg.img_channels() || s[2] != r || s[3] != r {
            return Err(GanError::ImageShape {
                network: "StyleGAN2 discriminator",
                expected: [self.cfg.img_channels(), r, r],
                found: s,
            });
        }
        let mut x: Option<Tensor> = None;
        for block in &self.blocks {
            x = Some(block.forward(x.as_ref(), img)?);
        }
        match &x {
            Some(x) => self.b4.forward(x),
            None => Err(GanError::Config("discriminator without blocks".into())),
        }
    }
}
