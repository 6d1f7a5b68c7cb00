//! Importance-weighted bound on log p(x) (Burda, Grosse, Salakhutdinov 2015, "Importance
//! Weighted Autoencoders", arXiv 1509.00519): `log p(x) >= E[log (1/K) sum_k w_k]` with
//! `w_k = p(x | z_k) p(z_k) / q(z_k | x)`, `z_k ~ q(z | x)`. K = 1 is the ELBO; the bound
//! tightens as K grows.
use crate::error::{Result, VaeError};
use crate::loss::{bernoulli_nll, gaussian_nll};
use crate::model::{Likelihood, Vae};
use tch::{Kind, Tensor};

const LN_2PI: f64 = 1.837_877_066_409_345_5;

fn log_normal(z: &Tensor, mu: &Tensor, logvar: &Tensor) -> Tensor {
    ((z - mu).square() / logvar.exp() + logvar + LN_2PI).sum_dim_intlist(-1, false, Kind::Float) * -0.5
}

/// -log p(x | z) per sample.
pub(crate) fn recon_nll(model: &Vae, out: &Tensor, x: &Tensor) -> Tensor {
    match model.cfg.likelihood {
        Likelihood::Bernoulli => bernoulli_nll(out, &((x + 1.0) * 0.5)),
        Likelihood::Gaussian { .. } => {
            gaussian_nll(out, x, &model.decoder_log_var().unwrap_or_else(|| Tensor::from(0.0)))
        }
    }
}

/// The K-sample importance-weighted lower bound on log p(x), per image, in nats.
///
/// # Shapes
/// - `x`: [n, c, h, w] in [-1, 1]; `labels`: [n] -> [n]
pub fn iwae_bound(model: &Vae, x: &Tensor, labels: Option<&Tensor>, k: usize) -> Result<Tensor> {
    if k == 0 {
        return Err(VaeError::Config("the IWAE bound needs K >= 1 samples".into()));
    }
    tch::no_grad(|| {
        let (mu, logvar) = model.encode(x, labels)?;
        let zeros = mu.zeros_like();
        let mut log_w = Vec::with_capacity(k);
        for _ in 0..k {
            let z = &mu + (&logvar * 0.5).exp() * mu.randn_like();
            let out = model.decode(&z, labels)?;
            let lw = -recon_nll(model, &out, x) + log_normal(&z, &zeros, &zeros) - log_normal(&z, &mu, &logvar);
            log_w.push(lw);
        }
        let lw = Tensor::stack(&log_w, 0);
        Ok(lw.logsumexp([0], false) - (k as f64).ln())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::VaeConfig;
    use tch::{nn::VarStore, Device};

    #[test]
    fn one_sample_bound_is_the_elbo_and_more_samples_tighten_it() {
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let cfg = VaeConfig { image_shape: [1, 4, 4], latent_dim: 3, widths: vec![16], ..Default::default() };
        let model = Vae::new(vs.root(), cfg).unwrap();
        let x = Tensor::rand([64, 1, 4, 4], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        // K = 1 in expectation equals the ELBO: compare averages over many draws.
        let b1 =
            (0..50).map(|_| iwae_bound(&model, &x, None, 1).unwrap().mean(Kind::Float).double_value(&[])).sum::<f64>()
                / 50.0;
        let elbo = (0..50)
            .map(|_| {
                let (t, _) = crate::train::elbo_terms(&model, &x, None).unwrap();
                -t.neg_elbo().mean(Kind::Float).double_value(&[])
            })
            .sum::<f64>()
            / 50.0;
        assert!((b1 - elbo).abs() < 0.05 * elbo.abs(), "{b1} vs {elbo}");
        let b50 = iwae_bound(&model, &x, None, 50).unwrap().mean(Kind::Float).double_value(&[]);
        assert!(b50 > b1, "IWAE-50 {b50} should be above the ELBO {b1}");
        assert!(iwae_bound(&model, &x, None, 0).is_err());
    }
}
