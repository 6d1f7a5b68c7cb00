//! Latent embeddings (posterior means) and a linear probe: multinomial logistic regression
//! trained on one set of features and scored on another, for comparing latents with pixels.
use crate::error::{Result, VaeError};
use crate::model::Vae;
use tch::{nn, nn::Module, nn::OptimizerConfig, Kind, Tensor};

/// Posterior means.
///
/// # Shapes
/// - `x`: [n, c, h, w] -> [n, latent_dim]
pub fn embed(model: &Vae, x: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
    tch::no_grad(|| Ok(model.encode(x, labels)?.0))
}

/// Test accuracy of logistic regression (L2 1e-4, full-batch Adam, `epochs` steps) trained on
/// standardised features.
///
/// # Shapes
/// - `train_x`: [n, d], `train_y`: [n]; `test_x`: [m, d], `test_y`: [m]
pub fn linear_probe(
    train_x: &Tensor,
    train_y: &Tensor,
    test_x: &Tensor,
    test_y: &Tensor,
    classes: i64,
    epochs: usize,
) -> Result<f64> {
    let (n, d) = train_x.size2().map_err(|e| VaeError::Shape(e.to_string()))?;
    if test_x.size().get(1) != Some(&d) || train_y.size() != [n] || test_y.size() != [test_x.size()[0]] {
        return Err(VaeError::Shape(format!(
            "probe features/labels disagree: train {:?}/{:?}, test {:?}/{:?}",
            train_x.size(),
            train_y.size(),
            test_x.size(),
            test_y.size()
        )));
    }
    let mean = train_x.mean_dim(0, true, Kind::Float);
    let std = train_x.std_dim(0, false, true) + 1e-6;
    let (xs, xt) = ((train_x - &mean) / &std, (test_x - &mean) / &std);
    let vs = nn::VarStore::new(train_x.device());
    let lin = nn::linear(vs.root(), d, classes, Default::default());
    let mut opt = nn::Adam { wd: 1e-4, ..Default::default() }.build(&vs, 0.05)?;
    for _ in 0..epochs {
        opt.backward_step(&lin.forward(&xs).cross_entropy_for_logits(train_y));
    }
    let acc =
        tch::no_grad(|| lin.forward(&xt).argmax(-1, false).eq_tensor(test_y).to_kind(Kind::Float).mean(Kind::Float));
    Ok(acc.double_value(&[]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn probe_separates_separable_classes_and_not_noise() {
        tch::manual_seed(0);
        let y = Tensor::arange(400, (Kind::Int64, Device::Cpu)).remainder(2);
        let signal = y.to_kind(Kind::Float).unsqueeze(1) * 4.0 + Tensor::randn([400, 3], (Kind::Float, Device::Cpu));
        let (tr, te) = (signal.narrow(0, 0, 300), signal.narrow(0, 300, 100));
        let acc = linear_probe(&tr, &y.narrow(0, 0, 300), &te, &y.narrow(0, 300, 100), 2, 200).unwrap();
        assert!(acc > 0.95, "{acc}");
        let noise = Tensor::randn([400, 3], (Kind::Float, Device::Cpu));
        let acc = linear_probe(
            &noise.narrow(0, 0, 300),
            &y.narrow(0, 0, 300),
            &noise.narrow(0, 300, 100),
            &y.narrow(0, 300, 100),
            2,
            200,
        )
        .unwrap();
        assert!(acc < 0.7, "{acc}");
    }
}
