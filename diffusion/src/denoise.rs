//! The one denoising loop that every sampler of genlab-diffusion runs: pixel and latent U-Nets,
//! class- and text-conditioned, with classifier-free guidance, for plain sampling, image-to-image
//! (SDEdit), RePaint and Stable Diffusion inpainting, on every scheduler.
//!
//! A model plugs in as a [`Denoiser`]: the network with its conditioning bound, giving the guided
//! model output for one step. The loop owns the scheduler: it scales the input, asks the denoiser,
//! steps; a hook may then replace part of the sample (the known region when inpainting), and
//! RePaint's jumps back up the noise schedule are moves of the same loop.
use tch::{Kind, Tensor};

use crate::error::Result;
use crate::scheduler::Scheduler;

/// A noise-predicting network with its conditioning bound (class labels, text embeddings,
/// guidance scale): what one reverse step asks of the model.
pub trait Denoiser {
    /// The model output (noise, v or x0, as the schedule was trained) for the scheduler-scaled
    /// sample `x` at timestep `t`, with classifier-free guidance applied when it is on.
    ///
    /// # Shapes
    /// - `x`: [n, c, h, w] -> [n, c, h, w]
    fn predict(&self, x: &Tensor, t: f64) -> Result<Tensor>;
}

/// One move of the loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Move {
    /// A reverse step of the scheduler at this timestep.
    Step(f64),
    /// The forward process from one noise level to a higher one, `x * sqrt(r) + z * sqrt(1 - r)`
    /// with `r = alpha_bar(to) / alpha_bar(from)` (RePaint's jump back).
    Renoise { ratio: f64 },
}

impl Move {
    /// A reverse step at each of `timesteps`.
    pub fn steps(timesteps: &[f64]) -> Vec<Move> {
        timesteps.iter().map(|&t| Move::Step(t)).collect()
    }
}

/// Run `moves` from `x` with `denoiser` and `scheduler`, inside `no_grad`. After every reverse
/// step, `after(i, x, scheduler)` (with `i` the move's index) returns the sample to go on with: `x` itself, or
/// `x` with a region replaced. The result is not clamped (latents are not bounded).
pub fn denoise(
    denoiser: &dyn Denoiser,
    scheduler: &mut dyn Scheduler,
    x: Tensor,
    moves: &[Move],
    after: &mut dyn FnMut(usize, Tensor, &dyn Scheduler) -> Result<Tensor>,
) -> Result<Tensor> {
    tch::no_grad(|| {
        let mut x = x;
        for (i, m) in moves.iter().enumerate() {
            x = match *m {
                Move::Step(t) => {
                    let input = scheduler.scale_model_input(&x, t)?;
                    let out = denoiser.predict(&input, t)?;
                    let x = scheduler.step(&out.to_kind(Kind::Float), t, &x.to_kind(Kind::Float))?;
                    after(i, x, &*scheduler)?
                }
                Move::Renoise { ratio } => {
                    let z = x.randn_like();
                    x * ratio.sqrt() + z * (1.0 - ratio).sqrt()
                }
            };
        }
        Ok(x)
    })
}

/// The `after` hook that changes nothing.
pub fn keep(_: usize, x: Tensor, _: &dyn Scheduler) -> Result<Tensor> {
    Ok(x)
}
