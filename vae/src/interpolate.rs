//! Latent-space interpolation between two inputs: linear, or spherical (slerp; Shoemake 1985,
//! as White 2016, "Sampling Generative Networks", arXiv 1609.04468, recommends for Gaussian
//! latents).
use crate::error::{Result, VaeError};
use crate::model::Vae;
use tch::{Kind, Tensor};

/// Points from `a` to `b` (inclusive), linearly or along the great circle.
///
/// # Shapes
/// - `a`, `b`: [d] -> [steps, d]
pub fn path(a: &Tensor, b: &Tensor, steps: i64, spherical: bool) -> Result<Tensor> {
    if steps < 2 {
        return Err(VaeError::Config(format!("interpolation needs at least 2 steps, got {steps}")));
    }
    let t = Tensor::linspace(0.0, 1.0, steps, (Kind::Float, a.device())).unsqueeze(1);
    let (a, b) = (a.unsqueeze(0), b.unsqueeze(0));
    if !spherical {
        return Ok(&a + (&b - &a) * &t);
    }
    let cos = ((&a * &b).sum(Kind::Float) / (a.norm() * b.norm() + 1e-12)).clamp(-1.0, 1.0).double_value(&[]);
    let omega = cos.acos();
    if omega.abs() < 1e-6 {
        return Ok(&a + (&b - &a) * &t);
    }
    let s = omega.sin();
    let rest: Tensor = 1.0 - &t;
    Ok(&a * (rest * omega).sin() / s + &b * (&t * omega).sin() / s)
}

/// Decoded images along the path between the posterior means of `x0` and `x1`.
///
/// # Shapes
/// - `x0`, `x1`: [1, c, h, w] -> [steps, c, h, w]
pub fn interpolate(model: &Vae, x0: &Tensor, x1: &Tensor, steps: i64, spherical: bool) -> Result<Tensor> {
    tch::no_grad(|| {
        let (m0, _) = model.encode(x0, None)?;
        let (m1, _) = model.encode(x1, None)?;
        let z = path(&m0.get(0), &m1.get(0), steps, spherical)?;
        Ok(model.output_to_image(&model.decode(&z, None)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_norms() {
        let a = Tensor::from_slice(&[1.0f32, 0.0]);
        let b = Tensor::from_slice(&[0.0f32, 1.0]);
        for sph in [false, true] {
            let p = path(&a, &b, 5, sph).unwrap();
            assert!(p.get(0).allclose(&a, 1e-6, 1e-6, false) && p.get(4).allclose(&b, 1e-6, 1e-6, false));
        }
        // Slerp keeps unit norm; lerp's midpoint shrinks to 1/sqrt(2).
        let s = path(&a, &b, 5, true).unwrap();
        assert!((s.get(2).norm().double_value(&[]) - 1.0).abs() < 1e-5);
        let l = path(&a, &b, 5, false).unwrap();
        assert!((l.get(2).norm().double_value(&[]) - 0.5f64.sqrt()).abs() < 1e-5);
        assert!(path(&a, &b, 1, true).is_err());
    }
}
