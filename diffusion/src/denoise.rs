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
    /// The forward process from one noise level to a higher one (RePaint's jump back):
    /// `x * scale + z * noise` with fresh Gaussian noise `z`; see [`Move::ddpm_renoise`] and
    /// [`Move::flow_renoise`].
    Renoise { scale: f64, noise: f64 },
}

impl Move {
    /// DDPM's forward process between cumulative alphas: `x * sqrt(r) + z * sqrt(1 - r)` with
    /// `r = alpha_bar(to) / alpha_bar(from)`.
    pub fn ddpm_renoise(alpha_bar_from: f64, alpha_bar_to: f64) -> Move {
        let r = alpha_bar_to / alpha_bar_from;
        Move::Renoise { scale: r.sqrt(), noise: (1.0 - r).max(0.0).sqrt() }
    }

    /// The flow-matching path `(1 - sigma) x0 + sigma eps` from `sigma_from` up to `sigma_to`:
    /// `x * s + z * sqrt(sigma_to^2 - s^2 sigma_from^2)` with `s = (1 - sigma_to) / (1 - sigma_from)`,
    /// which keeps `x0`'s share right and tops the noise up to `sigma_to`.
    pub fn flow_renoise(sigma_from: f64, sigma_to: f64) -> Move {
        let s = (1.0 - sigma_to) / (1.0 - sigma_from);
        Move::Renoise { scale: s, noise: (sigma_to * sigma_to - s * s * sigma_from * sigma_from).max(0.0).sqrt() }
    }

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
                Move::Renoise { scale, noise } => {
                    let z = x.randn_like();
                    x * scale + z * noise
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renoising_lands_on_the_forward_process_of_the_higher_level() {
        // x = a x0 + b eps at the lower level must become a' x0 + b' eps' at the higher one.
        for (from, to) in [(0.0, 0.3), (0.2, 0.5), (0.5, 0.99), (0.9, 1.0)] {
            let Move::Renoise { scale, noise } = Move::flow_renoise(from, to) else { unreachable!() };
            assert!((scale * (1.0 - from) - (1.0 - to)).abs() < 1e-12, "{from} -> {to}");
            assert!(((scale * from).powi(2) + noise * noise - to * to).abs() < 1e-12, "{from} -> {to}");
        }
        for (from, to) in [(1.0, 0.9), (0.8, 0.1), (0.5, 0.4999)] {
            let Move::Renoise { scale, noise } = Move::ddpm_renoise(from, to) else { unreachable!() };
            assert!((scale * from.sqrt() - to.sqrt()).abs() < 1e-12, "{from} -> {to}");
            assert!((scale * scale * (1.0 - from) + noise * noise - (1.0 - to)).abs() < 1e-12, "{from} -> {to}");
        }
    }
}
