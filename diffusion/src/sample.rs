//! Inference: sampling with classifier-free guidance, inpainting and image-to-image.
//!
//! - Classifier-free guidance: Ho and Salimans, "Classifier-Free Diffusion Guidance", arXiv 2207.12598,
//!   eq. 6, `out = out_uncond + g (out_cond - out_uncond)` on the model output (diffusers'
//!   `pipelines/stable_diffusion/pipeline_stable_diffusion.py`, `guidance_scale`); `g = 1` is plain
//!   conditional sampling. The combination is linear in the noise prediction for every prediction type.
//! - Inpainting: Lugmayr et al., "RePaint: Inpainting using Denoising Diffusion Probabilistic Models",
//!   arXiv 2201.09865, Algorithm 1 with the jump schedule of section 4.2 (diffusers'
//!   `pipelines/deprecated/repaint/pipeline_repaint.py` and `schedulers/scheduling_repaint.py`).
//! - Image-to-image: Meng et al., "SDEdit: Guided Image Synthesis and Editing with Stochastic
//!   Differential Equations", arXiv 2108.01073 (diffusers'
//!   `pipelines/stable_diffusion/pipeline_stable_diffusion_img2img.py`: `strength`, `get_timesteps`).
//!
//! Images are in [-1, 1], as in training. Randomness comes from libtorch's global generator, so
//! `tch::manual_seed` makes every function here reproducible.
use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::backbone::Backbone;
use crate::denoise::{denoise, keep, Denoiser, Move};
use crate::error::{DiffusionError, Result};
use crate::schedule::{NoiseSchedule, ScheduleConfig};
use crate::scheduler::{build, strength_timesteps, FlowMatchEuler, Scheduler, SchedulerKind};

/// Labels and guidance checked against the model: `None` for an unconditional model, else one label
/// per sample on the model's device (classes cycled `0, 1, ..` when none are given).
fn resolve_labels(model: &Backbone, labels: Option<&Tensor>, n: i64, guidance_scale: f64) -> Result<Option<Tensor>> {
    if !guidance_scale.is_finite() || guidance_scale < 0.0 {
        return Err(DiffusionError::Config(format!("guidance scale must be finite and >= 0, got {guidance_scale}")));
    }
    match (model.num_classes(), labels) {
        (None, _) if guidance_scale != 1.0 => Err(DiffusionError::UnconditionalGuidance { guidance_scale }),
        (None, Some(_)) => Err(DiffusionError::Labels("this model is unconditional: it takes no class labels".into())),
        (None, None) => Ok(None),
        (Some(k), None) => Ok(Some(Tensor::arange(n, (Kind::Int64, model.device())).remainder(k.max(1)))),
        (Some(k), Some(l)) => {
            if l.size() != [n] {
                return Err(DiffusionError::Labels(format!("expected {n} labels, got shape {:?}", l.size())));
            }
            let l = l.f_to_kind(Kind::Int64)?.f_to_device(model.device())?;
            if n > 0 && (l.min().int64_value(&[]) < 0 || l.max().int64_value(&[]) > k) {
                return Err(DiffusionError::Labels(format!(
                    "labels must be classes 0..{k} (or {k}, the null class), got {:?}",
                    Vec::<i64>::try_from(&l).unwrap_or_default()
                )));
            }
            Ok(Some(l))
        }
    }
}

/// The model output at `x`, with classifier-free guidance when `guidance_scale != 1`.
///
/// # Shapes
/// - `x`: [n, c, h, w], `labels`: [n] -> [n, c, h, w]
fn guided_output(
    model: &Backbone,
    x: &Tensor,
    timestep: f64,
    labels: Option<&Tensor>,
    guidance_scale: f64,
) -> Result<Tensor> {
    let t = Tensor::from(timestep).to_kind(Kind::Float);
    match (labels, model.null_class()) {
        (Some(l), Some(null)) if guidance_scale != 1.0 => {
            let both = model.forward_t(
                &Tensor::cat(&[x, x], 0),
                &t,
                Some(&Tensor::cat(&[l, &l.full_like(null)], 0)),
                false,
            )?;
            let halves = both.chunk(2, 0);
            let (cond, uncond) = (&halves[0], &halves[1]);
            Ok(uncond + (cond - uncond) * guidance_scale)
        }
        _ => model.forward_t(x, &t, labels, false),
    }
}

/// A class-conditional or unconditional U-Net with its labels and guidance scale: the
/// [`Denoiser`] of pixel and latent runs.
pub struct ClassGuided<'a> {
    pub model: &'a Backbone,
    /// One label per sample (checked by [`ClassGuided::new`]); `None` for an unconditional model.
    pub labels: Option<Tensor>,
    pub guidance_scale: f64,
}

impl<'a> ClassGuided<'a> {
    /// Check `labels` and `guidance_scale` against `model` for `n` samples (classes cycled when a
    /// conditional model gets no labels).
    pub fn new(model: &'a Backbone, labels: Option<&Tensor>, n: i64, guidance_scale: f64) -> Result<Self> {
        Ok(ClassGuided { model, labels: resolve_labels(model, labels, n, guidance_scale)?, guidance_scale })
    }
}

impl Denoiser for ClassGuided<'_> {
    fn predict(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        guided_output(self.model, x, t, self.labels.as_ref(), self.guidance_scale)
    }
}

/// `n` samples from noise with `steps` steps of the scheduler `kind`. A class-conditional model takes
/// `labels` (classes cycled when `None`); `guidance_scale` other than 1 applies classifier-free
/// guidance, an error for an unconditional model. 0 or more than the training timesteps is
/// [`DiffusionError::InferenceSteps`].
///
/// # Shapes
/// - `labels`: [n] int64
/// - returns [n, in_channels, sample_size.0, sample_size.1] in [-1, 1]
pub fn sample(
    model: &Backbone,
    schedule: &ScheduleConfig,
    kind: SchedulerKind,
    steps: usize,
    n: i64,
    labels: Option<&Tensor>,
    guidance_scale: f64,
) -> Result<Tensor> {
    Ok(sample_unclamped(model, schedule, kind, steps, n, labels, guidance_scale)?.clamp(-1.0, 1.0))
}

/// [`sample`] without the final clamp to [-1, 1]: the model's own space (latents for a latent run).
///
/// # Shapes
/// - `labels`: [n] int64
/// - returns [n, in_channels, sample_size.0, sample_size.1]
pub(crate) fn sample_unclamped(
    model: &Backbone,
    schedule: &ScheduleConfig,
    kind: SchedulerKind,
    steps: usize,
    n: i64,
    labels: Option<&Tensor>,
    guidance_scale: f64,
) -> Result<Tensor> {
    if n < 1 {
        return Err(DiffusionError::Config(format!("the number of samples must be at least 1, got {n}")));
    }
    let mut scheduler = build(kind, schedule, steps)?;
    let denoiser = ClassGuided::new(model, labels, n, guidance_scale)?;
    let [h, w] = model.sample_size();
    let shape = [n, model.in_channels(), h, w];
    let x = tch::no_grad(|| Tensor::randn(shape, (Kind::Float, model.device())) * scheduler.init_noise_sigma());
    let moves = Move::steps(scheduler.timesteps());
    denoise(&denoiser, scheduler.as_mut(), x, &moves, &mut keep)
}

/// RePaint's resampling: after reaching every `jump_length`-th noise level, go back up `jump_length`
/// levels with the forward process and denoise again, `resamplings - 1` times, so that the generated
/// region harmonises with the known one. `jump_length 1, resamplings 1` is plain replacement.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RePaint {
    pub jump_length: usize,
    pub resamplings: usize,
}

impl Default for RePaint {
    /// The paper's setting (Lugmayr et al. 2022, section 4.2): j = 10, r = 10.
    fn default() -> Self {
        RePaint { jump_length: 10, resamplings: 10 }
    }
}

impl RePaint {
    /// The noise levels visited, from `levels` (pure noise) down to 0 (clean): each move is one level
    /// down (a reverse step) or `jump_length` up (the forward process), as diffusers' `get_schedule_jump`.
    pub fn levels(&self, levels: usize) -> Vec<usize> {
        let j = self.jump_length.max(1);
        // Jump only from levels a whole jump below pure noise.
        let mut jumps: HashMap<usize, usize> =
            (j..=levels.saturating_sub(j)).step_by(j).map(|l| (l, self.resamplings.saturating_sub(1))).collect();
        let mut level = levels;
        let mut out = vec![level];
        while level > 0 {
            level -= 1;
            out.push(level);
            if let Some(left) = jumps.get_mut(&level).filter(|left| **left > 0) {
                *left -= 1;
                level += j;
                out.push(level);
            }
        }
        out
    }
}

/// Check that `mask` fits `image`: [n or 1, 1 or c, h, w].
pub(crate) fn check_mask(image: &Tensor, mask: &Tensor) -> Result<()> {
    let (i, m) = (image.size(), mask.size());
    let fits =
        i.len() == 4 && m.len() == 4 && (m[0] == i[0] || m[0] == 1) && (m[1] == i[1] || m[1] == 1) && m[2..] == i[2..];
    if fits {
        Ok(())
    } else {
        let either = |d: Option<&i64>| match d {
            Some(1) | None => "1".to_string(),
            Some(d) => format!("{d} or 1"),
        };
        let hw = i.get(2..).map(|s| format!("{s:?}")).unwrap_or_default();
        Err(DiffusionError::Shape(format!(
            "the mask has shape {m:?}, the image {i:?}: expected [{}, {}, height, width] with height and width {hw}",
            either(i.first()),
            either(i.get(1)),
        )))
    }
}

/// Fill the unknown region of `image` (where `mask` is 0; 1 marks known pixels, values are rounded at
/// 0.5) with RePaint (Lugmayr et al., arXiv 2201.09865) over `steps` inference steps: DDPM steps and
/// DDPM's forward process for the jumps back on a denoising run; flow-euler steps and the flow path
/// `(1 - sigma) x0 + sigma eps` on a flow-matching run. At every step the known region is replaced by
/// the original noised to that step's noise level, so at the end it is the original exactly.
///
/// # Shapes
/// - `image`: [n, in_channels, h, w] in [-1, 1]
/// - `mask`: [n or 1, 1 or in_channels, h, w]
/// - `labels`: [n] int64
/// - returns [n, in_channels, h, w] in [-1, 1]
pub fn inpaint(
    model: &Backbone,
    schedule: &ScheduleConfig,
    image: &Tensor,
    mask: &Tensor,
    steps: usize,
    repaint: RePaint,
    labels: Option<&Tensor>,
    guidance_scale: f64,
) -> Result<Tensor> {
    let x = inpaint_unclamped(model, schedule, image, mask, steps, repaint, labels, guidance_scale)?;
    tch::no_grad(|| {
        let original = image.f_to_kind(Kind::Float)?.f_to_device(model.device())?;
        let known = mask.f_to_kind(Kind::Float)?.f_to_device(model.device())?.f_gt(0.5)?.to_kind(Kind::Float);
        // Known pixels are exact; only generated ones are clipped.
        Ok(&known * &original + (known.ones_like() - &known) * x.clamp(-1.0, 1.0))
    })
}

/// [`inpaint`] without clamping the generated region: the model's own space (latents for a latent
/// run). The known region is `image` exactly.
///
/// # Shapes
/// - as [`inpaint`]; returns [n, in_channels, h, w]
pub(crate) fn inpaint_unclamped(
    model: &Backbone,
    schedule: &ScheduleConfig,
    image: &Tensor,
    mask: &Tensor,
    steps: usize,
    repaint: RePaint,
    labels: Option<&Tensor>,
    guidance_scale: f64,
) -> Result<Tensor> {
    check_mask(image, mask)?;
    if repaint.jump_length == 0 || repaint.resamplings == 0 {
        return Err(DiffusionError::Config(format!(
            "RePaint needs jump_length >= 1 and resamplings >= 1, got {} and {}",
            repaint.jump_length, repaint.resamplings
        )));
    }
    let n = image.size()[0];
    let denoiser = ClassGuided::new(model, labels, n, guidance_scale)?;
    // The reverse steps: DDPM for a denoising run, flow-euler (restarted at each step's own place in
    // the schedule, since RePaint goes back up it) for a flow-matching run.
    // A flow run's sigmas (ending with the terminal 0) place the known region and the jumps back.
    let (mut scheduler, sigmas): (Box<dyn Scheduler>, Vec<f64>) = match &schedule.flow {
        None => (build(SchedulerKind::Ddpm, schedule, steps)?, Vec::new()),
        Some(flow) => {
            let mut euler = FlowMatchEuler::new(flow)?;
            euler.set_timesteps(steps)?;
            let sigmas = euler.sigmas().to_vec();
            (Box::new(RestartingEuler(euler)), sigmas)
        }
    };
    let timesteps = scheduler.timesteps().to_vec();
    let k = timesteps.len();
    // Level l >= 1 is inference timestep k - l; level 0 is the clean image.
    let timestep = |l: usize| timesteps[k - l];
    // How the known region and the jumps back are noised: DDPM's forward process, or the flow path.
    let noise_schedule = NoiseSchedule::new(schedule)?;
    let abar = noise_schedule.alphas_cumprod();
    let flow = schedule.flow.is_some();
    let abar_at = |l: usize| if l == 0 { 1.0 } else { abar[timestep(l) as usize] };
    let sigma_at = |l: usize| if l == 0 { 0.0 } else { sigmas[k - l] };
    // Down one level: a reverse step; up a jump: the forward process. `to[i]`: the level after move i.
    let levels = repaint.levels(k);
    let (moves, to): (Vec<Move>, Vec<usize>) = levels
        .windows(2)
        .map(|w| {
            let m = if w[1] < w[0] {
                Move::Step(timestep(w[0]))
            } else if flow {
                Move::flow_renoise(sigma_at(w[0]), sigma_at(w[1]))
            } else {
                Move::ddpm_renoise(abar_at(w[0]), abar_at(w[1]))
            };
            (m, w[1])
        })
        .unzip();
    let device = model.device();
    let (original, known, unknown, x) = tch::no_grad(|| -> Result<_> {
        let original = image.f_to_kind(Kind::Float)?.f_to_device(device)?;
        let known = mask.f_to_kind(Kind::Float)?.f_to_device(device)?.f_gt(0.5)?.to_kind(Kind::Float);
        let unknown = known.ones_like() - &known;
        let x = original.randn_like();
        Ok((original, known, unknown, x))
    })?;
    // After every reverse step the known region is the original at the new level.
    let mut replace_known = |i: usize, generated: Tensor, _: &dyn Scheduler| -> Result<Tensor> {
        let known_part = if to[i] == 0 {
            original.shallow_clone()
        } else if flow {
            let s = sigma_at(to[i]);
            &original * (1.0 - s) + original.randn_like() * s
        } else {
            let t_to = Tensor::from_slice(&[timestep(to[i]) as i64]);
            noise_schedule.add_noise(&original, &original.randn_like(), &t_to)?
        };
        Ok(&known * known_part + &unknown * generated)
    };
    let x = denoise(&denoiser, scheduler.as_mut(), x, &moves, &mut replace_known)?;
    Ok(tch::no_grad(|| &known * &original + &unknown * x))
}

/// flow-euler that takes each step from the place of its timestep in the schedule, whatever it did
/// before: RePaint's loop goes back up the schedule and down again.
struct RestartingEuler(FlowMatchEuler);

impl Scheduler for RestartingEuler {
    fn timesteps(&self) -> &[f64] {
        self.0.timesteps()
    }
    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        self.0.set_timesteps(steps)
    }
    fn scale_model_input(&self, sample: &Tensor, timestep: f64) -> Result<Tensor> {
        self.0.scale_model_input(sample, timestep)
    }
    fn step(&mut self, model_output: &Tensor, timestep: f64, sample: &Tensor) -> Result<Tensor> {
        let i =
            self.0.timesteps().iter().position(|&t| t == timestep).ok_or_else(|| DiffusionError::UnknownTimestep {
                scheduler: "flow-euler",
                timestep,
                timesteps: self.0.timesteps().to_vec(),
            })?;
        self.0.set_begin_index(i);
        self.0.step(model_output, timestep, sample)
    }
    fn add_noise(&self, original: &Tensor, noise: &Tensor, timesteps: &Tensor) -> Result<Tensor> {
        self.0.add_noise(original, noise, timesteps)
    }
    fn init_noise_sigma(&self) -> f64 {
        self.0.init_noise_sigma()
    }
}

/// SDEdit: noise `image` to `strength` (0 < strength <= 1) of the way along the sampler's schedule,
/// then denoise it with the scheduler `kind` from there. Strength 1 ignores the image; small
/// strengths stay close to it. Of `steps` inference steps, `floor(steps * strength)` are run.
///
/// # Shapes
/// - `image`: [n, in_channels, h, w] in [-1, 1]
/// - `labels`: [n] int64
/// - returns [n, in_channels, h, w] in [-1, 1]
pub fn img2img(
    model: &Backbone,
    schedule: &ScheduleConfig,
    kind: SchedulerKind,
    steps: usize,
    image: &Tensor,
    strength: f64,
    labels: Option<&Tensor>,
    guidance_scale: f64,
) -> Result<Tensor> {
    Ok(img2img_unclamped(model, schedule, kind, steps, image, strength, labels, guidance_scale)?.clamp(-1.0, 1.0))
}

/// [`img2img`] without the final clamp to [-1, 1]: the model's own space (latents for a latent run).
///
/// # Shapes
/// - as [`img2img`]; returns [n, in_channels, h, w]
pub(crate) fn img2img_unclamped(
    model: &Backbone,
    schedule: &ScheduleConfig,
    kind: SchedulerKind,
    steps: usize,
    image: &Tensor,
    strength: f64,
    labels: Option<&Tensor>,
    guidance_scale: f64,
) -> Result<Tensor> {
    let mut scheduler = build(kind, schedule, steps)?;
    let timesteps = strength_timesteps(scheduler.as_ref(), strength)?;
    let n = match image.size().as_slice() {
        &[n, c, _, _] if c == model.in_channels() && n > 0 => n,
        s => {
            return Err(DiffusionError::Shape(format!(
                "the image has shape {s:?}: expected [n, {}, height, width]",
                model.in_channels()
            )))
        }
    };
    let denoiser = ClassGuided::new(model, labels, n, guidance_scale)?;
    let x = tch::no_grad(|| -> Result<Tensor> {
        let original = image.f_to_kind(Kind::Float)?.f_to_device(model.device())?;
        scheduler.add_noise(&original, &original.randn_like(), &Tensor::from_slice(&timesteps[..1]))
    })?;
    denoise(&denoiser, scheduler.as_mut(), x, &Move::steps(&timesteps), &mut keep)
}

/// Read a PNG (or JPEG) as a batch of one image in [-1, 1] with `channels` channels: grey images
/// for 1, RGB for 3 (an alpha channel is dropped). Any other combination is an error naming the file.
///
/// # Shapes
/// - returns [1, channels, h, w]
pub fn read_image(path: &Path, channels: i64) -> Result<Tensor> {
    let img =
        image::open(path).map_err(|e| DiffusionError::Image { path: path.to_path_buf(), message: e.to_string() })?;
    let grey = !img.color().has_color();
    let (w, h) = (img.width() as i64, img.height() as i64);
    let bytes = match (channels, grey) {
        (1, true) => img.into_luma8().into_raw(),
        (3, false) => img.into_rgb8().into_raw(),
        _ => {
            return Err(DiffusionError::Image {
                path: path.to_path_buf(),
                message: format!(
                    "a {} image ({:?}) for a {channels}-channel model: expected {}",
                    if grey { "greyscale" } else { "colour" },
                    img.color(),
                    match channels {
                        1 => "a greyscale image",
                        3 => "an RGB image",
                        _ => "an image of 1 or 3 channels",
                    }
                ),
            })
        }
    };
    let hwc = Tensor::from_slice(&bytes).view([h, w, channels]);
    Ok((hwc.permute([2, 0, 1]).unsqueeze(0).to_kind(Kind::Float) / 127.5 - 1.0).contiguous())
}

/// Read an inpainting mask: white (>= 128 in luma) marks known pixels, black the region to generate.
///
/// # Shapes
/// - returns [1, 1, h, w] of 0 and 1
pub fn read_mask(path: &Path) -> Result<Tensor> {
    let img =
        image::open(path).map_err(|e| DiffusionError::Image { path: path.to_path_buf(), message: e.to_string() })?;
    let (w, h) = (img.width() as i64, img.height() as i64);
    let luma = Tensor::from_slice(&img.into_luma8().into_raw()).view([1, 1, h, w]);
    Ok(luma.ge(128).to_kind(Kind::Float))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repaint_levels_follow_the_jump_schedule() {
        let plain = RePaint { jump_length: 1, resamplings: 1 }.levels(3);
        assert_eq!(plain, vec![3, 2, 1, 0]);
        let r2 = RePaint { jump_length: 1, resamplings: 2 }.levels(3);
        assert_eq!(r2, vec![3, 2, 3, 2, 1, 2, 1, 0]);
        let j2 = RePaint { jump_length: 2, resamplings: 2 }.levels(5);
        assert_eq!(j2, vec![5, 4, 3, 2, 4, 3, 2, 1, 0]);
        // Every down move is one level, every up move one jump.
        for w in RePaint::default().levels(100).windows(2) {
            assert!(w[1] + 1 == w[0] || w[1] == w[0] + 10, "{w:?}");
        }
    }

    #[test]
    fn masks_of_the_wrong_shape_are_errors() {
        let img = Tensor::zeros([2, 3, 8, 8], (Kind::Float, tch::Device::Cpu));
        for ok in [[2, 1, 8, 8], [1, 3, 8, 8], [1, 1, 8, 8]] {
            check_mask(&img, &Tensor::zeros(ok, (Kind::Float, tch::Device::Cpu))).unwrap();
        }
        for bad in [vec![2, 1, 8, 7], vec![3, 1, 8, 8], vec![1, 2, 8, 8], vec![8, 8]] {
            let e = check_mask(&img, &Tensor::zeros(bad.as_slice(), (Kind::Float, tch::Device::Cpu)));
            assert!(matches!(e, Err(DiffusionError::Shape(_))), "{bad:?}");
        }
    }
}
