//! The StyleGAN2 network configuration shared by the generator and the discriminator.
use crate::error::{GanError, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// The mapping network z -> w (`MappingNetwork`'s arguments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MappingConfig {
    /// Dense layers (8 in the paper).
    pub num_layers: i64,
    /// Learning-rate multiplier of the mapping layers (0.01: the mapping learns 100x slower).
    pub lr_multiplier: f64,
    /// Decay of the tracked mean `w_avg` used for truncation (0.995).
    pub w_avg_beta: f64,
}

impl Default for MappingConfig {
    fn default() -> Self {
        MappingConfig { num_layers: 8, lr_multiplier: 0.01, w_avg_beta: 0.995 }
    }
}

/// Both networks of a StyleGAN2. The generator works at [`StyleGan2Config::resolution`], the
/// smallest power of two (at least 8) that holds the data's `image_shape`; real images are
/// padded to it (edge pixels repeated, centred) and generated ones cropped back to the data's
/// size (28x28 data trains a 32x32 network whose outputs are centre-cropped to 28x28).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StyleGan2Config {
    /// [channels, height, width] of the data.
    pub image_shape: [i64; 3],
    pub z_dim: i64,
    pub w_dim: i64,
    pub mapping: MappingConfig,
    /// Feature maps at resolution r: `min(channel_base / r, channel_max)`, for both networks.
    pub channel_base: i64,
    pub channel_max: i64,
    /// Per-pixel noise inputs in every synthesis layer.
    pub use_noise: bool,
    /// Taps of the separable low-pass filter used for every 2x resampling.
    pub resample_filter: Vec<f64>,
    /// Minibatch standard deviation: group size (the batch is split into groups of this size).
    pub mbstd_group_size: i64,
    /// Minibatch standard deviation: features appended (0: no minibatch stddev layer).
    pub mbstd_num_channels: i64,
}

impl Default for StyleGan2Config {
    /// The paper's config F at 1024x1024 (stylegan2-ada-pytorch `train.py`, cfg `stylegan2`).
    fn default() -> Self {
        StyleGan2Config {
            image_shape: [3, 1024, 1024],
            z_dim: 512,
            w_dim: 512,
            mapping: MappingConfig::default(),
            channel_base: 32768,
            channel_max: 512,
            use_noise: true,
            resample_filter: vec![1.0, 3.0, 3.0, 1.0],
            mbstd_group_size: 4,
            mbstd_num_channels: 1,
        }
    }
}

impl StyleGan2Config {
    /// The networks' resolution: the smallest power of two >= 8 holding the data's height and width.
    pub fn resolution(&self) -> i64 {
        let side = self.image_shape[1].max(self.image_shape[2]).max(8);
        let mut r = 8;
        while r < side {
            r *= 2;
        }
        r
    }

    pub fn img_channels(&self) -> i64 {
        self.image_shape[0]
    }

    /// 4, 8, ..., resolution.
    pub fn block_resolutions(&self) -> Vec<i64> {
        let mut v = vec![4];
        while *v.last().unwrap_or(&4) < self.resolution() {
            let next = v[v.len() - 1] * 2;
            v.push(next);
        }
        v
    }

    /// Feature maps at resolution `res`.
    pub fn channels(&self, res: i64) -> i64 {
        (self.channel_base / res).min(self.channel_max)
    }

    /// The number of w vectors the synthesis network takes: two per block (one for the
    /// first) plus the last block's toRGB, `2 log2(resolution) - 2`.
    pub fn num_ws(&self) -> i64 {
        2 * self.block_resolutions().len() as i64
    }

    pub fn validate(&self) -> Result<()> {
        let [c, h, w] = self.image_shape;
        if c < 1 || h < 1 || w < 1 {
            return Err(GanError::Config(format!("image_shape {:?} must be positive", self.image_shape)));
        }
        if self.z_dim < 1 || self.w_dim < 1 || self.mapping.num_layers < 1 {
            return Err(GanError::Config(format!(
                "z_dim ({}), w_dim ({}) and mapping.num_layers ({}) must be at least 1",
                self.z_dim, self.w_dim, self.mapping.num_layers
            )));
        }
        let m = &self.mapping;
        if !(m.lr_multiplier.is_finite() && m.lr_multiplier > 0.0 && (0.0..1.0).contains(&m.w_avg_beta)) {
            return Err(GanError::Config(format!(
                "mapping.lr_multiplier ({}) must be > 0 and mapping.w_avg_beta ({}) in [0, 1)",
                self.mapping.lr_multiplier, self.mapping.w_avg_beta
            )));
        }
        let r = self.resolution();
        if self.channel_max < 1 || self.channel_base / r < 1 {
            return Err(GanError::Config(format!(
                "channel_base {} gives no feature maps at resolution {r}: it must be at least the resolution",
                self.channel_base
            )));
        }
        if self.mbstd_num_channels < 0
            || (self.mbstd_num_channels > 0
                && (self.mbstd_group_size < 1 || self.channels(4) % self.mbstd_num_channels != 0))
        {
            return Err(GanError::Config(format!(
                "minibatch stddev: group size {} must be >= 1 and num_channels {} must divide the {} features at 4x4",
                self.mbstd_group_size,
                self.mbstd_num_channels,
                self.channels(4)
            )));
        }
        let _ = crate::stylegan2::layers::setup_filter(&self.resample_filter, tch::Device::Cpu)?;
        Ok(())
    }

    /// Pad data images to the networks' square resolution, repeating edge pixels, centred.
    ///
    /// # Shapes
    /// - `x`: [n, c, h, w] (the data's shape) -> [n, c, resolution, resolution]
    pub fn pad_to_resolution(&self, x: &Tensor) -> Result<Tensor> {
        self.check_data(x)?;
        let r = self.resolution();
        let [_, h, w] = self.image_shape;
        if h == r && w == r {
            return Ok(x.shallow_clone());
        }
        let (top, left) = ((r - h) / 2, (r - w) / 2);
        Ok(x.pad([left, r - w - left, top, r - h - top], "replicate", None))
    }

    /// Crop network-resolution images back to the data's shape (the centre, as padded).
    ///
    /// # Shapes
    /// - `x`: [n, c, resolution, resolution] -> [n, c, h, w] (the data's shape)
    pub fn crop_to_data(&self, x: &Tensor) -> Tensor {
        let r = self.resolution();
        let [_, h, w] = self.image_shape;
        x.narrow(2, (r - h) / 2, h).narrow(3, (r - w) / 2, w)
    }

    /// An error unless `x` is a batch of the data's shape.
    pub fn check_data(&self, x: &Tensor) -> Result<()> {
        let s = x.size();
        if s.len() != 4 || s[1..] != self.image_shape[..] {
            return Err(GanError::ImageShape { network: "StyleGAN2", expected: self.image_shape, found: s });
        }
        Ok(())
    }
}
