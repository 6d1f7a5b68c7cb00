//! The denoising network of a diffusion run: a U-Net ([`UNet2DModel`]) or a diffusion transformer
//! ([`DiTModel`]). Training, the losses, the samplers and the latent tools take a [`Backbone`] and ask
//! it for a prediction; only building it looks at which one it is.
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use crate::dit::{DiTConfig, DiTModel};
use crate::error::{DiffusionError, Result};
use crate::unet::{UNet2DConfig, UNet2DModel};

/// The configuration of a run's network, written into `config.json` under its kind's key: `"unet"`
/// (every run written before diffusion transformers existed) or `"dit"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BackboneConfig {
    #[serde(rename = "unet")]
    UNet(UNet2DConfig),
    #[serde(rename = "dit")]
    DiT(DiTConfig),
}

impl BackboneConfig {
    /// Every preset name: the U-Net's, then the DiT's.
    pub fn presets() -> Vec<&'static str> {
        UNet2DConfig::PRESETS.iter().chain(DiTConfig::PRESETS.iter()).copied().collect()
    }

    /// The preset `name` (a U-Net or a DiT preset) for images of `image_shape`, conditioned on
    /// `num_classes` classes with a null class for guidance (`None`: unconditional).
    pub fn preset(name: &str, image_shape: [i64; 3], num_classes: Option<i64>) -> Result<Self> {
        if UNet2DConfig::PRESETS.contains(&name) {
            let mut unet = UNet2DConfig::preset(name, image_shape)?;
            unet.num_class_embeds = num_classes.map(|k| k + 1);
            unet.validate()?;
            Ok(BackboneConfig::UNet(unet))
        } else if DiTConfig::PRESETS.contains(&name) {
            let dit = DiTConfig::preset(name, image_shape)?.with_classes(num_classes);
            dit.validate()?;
            Ok(BackboneConfig::DiT(dit))
        } else {
            Err(DiffusionError::UnknownName {
                what: "model preset",
                found: name.to_string(),
                expected: Self::presets().join(", "),
            })
        }
    }

    /// `"U-Net"` or `"DiT"`, for messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            BackboneConfig::UNet(_) => "U-Net",
            BackboneConfig::DiT(_) => "DiT",
        }
    }

    /// The shape the network takes and gives: [channels, height, width] of the training images
    /// (or latents).
    pub fn sample_shape(&self) -> [i64; 3] {
        match self {
            BackboneConfig::UNet(c) => [c.in_channels, c.sample_size[0], c.sample_size[1]],
            BackboneConfig::DiT(c) => [c.in_channels, c.sample_size[0], c.sample_size[1]],
        }
    }

    /// The channels of the prediction (the DiT's learned-sigma channels not counted).
    pub fn prediction_channels(&self) -> i64 {
        match self {
            BackboneConfig::UNet(c) => c.out_channels,
            BackboneConfig::DiT(c) => c.in_channels,
        }
    }

    /// The number of class embeddings with the null class (`num_classes + 1`), or `None` for an
    /// unconditional network.
    pub fn num_class_embeds(&self) -> Option<i64> {
        match self {
            BackboneConfig::UNet(c) => c.num_class_embeds,
            BackboneConfig::DiT(c) => c.class_conditional.then_some(c.num_embeds_ada_norm + 1),
        }
    }

    /// The U-Net's configuration, if this is a U-Net.
    pub fn unet(&self) -> Option<&UNet2DConfig> {
        match self {
            BackboneConfig::UNet(c) => Some(c),
            BackboneConfig::DiT(_) => None,
        }
    }

    /// The DiT's configuration, if this is a DiT.
    pub fn dit(&self) -> Option<&DiTConfig> {
        match self {
            BackboneConfig::DiT(c) => Some(c),
            BackboneConfig::UNet(_) => None,
        }
    }

    /// Check every field, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        match self {
            BackboneConfig::UNet(c) => c.validate(),
            BackboneConfig::DiT(c) => c.validate(),
        }
    }
}

/// A run's denoising network, built from its [`BackboneConfig`].
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per run, never moved in a loop
pub enum Backbone {
    UNet(UNet2DModel),
    DiT(DiTModel),
}

impl Backbone {
    /// The network of `cfg`, with its variables under `vs`.
    pub fn new(vs: nn::Path<'_>, cfg: &BackboneConfig) -> Result<Self> {
        Ok(match cfg {
            BackboneConfig::UNet(c) => Backbone::UNet(UNet2DModel::new(vs, c.clone())?),
            BackboneConfig::DiT(c) => Backbone::DiT(DiTModel::new(vs, c.clone())?),
        })
    }

    pub fn device(&self) -> Device {
        match self {
            Backbone::UNet(m) => m.device(),
            Backbone::DiT(m) => m.device(),
        }
    }

    /// The number of real classes of a class-conditional network.
    pub fn num_classes(&self) -> Option<i64> {
        match self {
            Backbone::UNet(m) => m.num_classes(),
            Backbone::DiT(m) => m.num_classes(),
        }
    }

    /// The label that means "no class" for classifier-free guidance.
    pub fn null_class(&self) -> Option<i64> {
        match self {
            Backbone::UNet(m) => m.null_class(),
            Backbone::DiT(m) => m.null_class(),
        }
    }

    /// The channels of the samples the network denoises.
    pub fn in_channels(&self) -> i64 {
        match self {
            Backbone::UNet(m) => m.cfg.in_channels,
            Backbone::DiT(m) => m.cfg.in_channels,
        }
    }

    /// The training size (height, width).
    pub fn sample_size(&self) -> [i64; 2] {
        match self {
            Backbone::UNet(m) => m.cfg.sample_size,
            Backbone::DiT(m) => m.cfg.sample_size,
        }
    }

    /// The prediction (noise, v, x0 or flow velocity: the schedule decides what it learns). A
    /// learned-sigma DiT's variance channels are dropped, as diffusers' `DiTPipeline` does.
    ///
    /// # Shapes
    /// - `xs`: [batch, in_channels, h, w]
    /// - `timesteps`: [batch] or one for all (fractional allowed)
    /// - `class_labels`: [batch] int64, required by a class-conditional network, an error otherwise
    /// - returns [batch, in_channels, h, w]
    pub fn forward_t(
        &self,
        xs: &Tensor,
        timesteps: &Tensor,
        class_labels: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        match self {
            Backbone::UNet(m) => m.forward_t(xs, timesteps, class_labels, train),
            Backbone::DiT(m) => {
                let out = m.forward_t(xs, timesteps, class_labels, train)?;
                Ok(if m.cfg.learned_sigma() { out.narrow(1, 0, m.cfg.in_channels) } else { out })
            }
        }
    }
}
