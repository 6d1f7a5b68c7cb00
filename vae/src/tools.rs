//! A trained VAE applied to a dataset: reconstruction and interpolation grids, anomaly scores,
//! latent embeddings with a linear probe, imputation of missing pixels and the IWAE bound. Each
//! tool takes a [`RunOnData`] (the run and the images it works on) and returns images or a report;
//! `genlab vae reconstruct|interpolate|anomaly|embed|impute|likelihood` print and save them.
use crate::error::{Result, VaeError};
use crate::impute::{make_mask, masked_mse, MaskKind};
use crate::model::Vae;
use genlab_data::Dataset;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{nn::VarStore, Device, Kind, Tensor};

/// A trained VAE run and the first `count` images of a dataset of the model's image shape.
pub struct RunOnData {
    pub model: Vae,
    pub vs: VarStore,
    pub ds: Arc<dyn Dataset>,
    /// The dataset's name, for messages.
    pub name: String,
    pub count: usize,
    pub device: Device,
}

impl RunOnData {
    /// The VAE run at `run` (a run directory or a checkpoint folder) on the first `n` images of
    /// `ds` (all by default).
    pub fn open(run: &Path, ds: Arc<dyn Dataset>, name: &str, n: Option<usize>, device: Device) -> Result<Self> {
        let (vs, model, _) = crate::train::load(run, device)?;
        let [c, h, w] = ds.shape();
        if [c as i64, h as i64, w as i64] != model.cfg.image_shape {
            return Err(VaeError::Shape(format!(
                "{name}: images are {c}x{h}x{w}, the model was trained on {:?}",
                model.cfg.image_shape
            )));
        }
        let count = n.unwrap_or(ds.len()).min(ds.len());
        if count == 0 {
            return Err(VaeError::Config(format!("{name}: no images to use")));
        }
        Ok(RunOnData { model, vs, ds, name: name.to_string(), count, device })
    }

    fn conditional(&self) -> bool {
        self.model.cfg.num_classes.is_some()
    }

    /// `f(images, labels)` over the images in chunks of `chunk`, results concatenated on the CPU;
    /// the labels are passed to `f` for a conditional model only, and returned when the dataset has them.
    pub fn map_chunks(
        &self,
        chunk: usize,
        mut f: impl FnMut(&Tensor, Option<&Tensor>) -> Result<Tensor>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (mut outs, mut labels) = (Vec::new(), Vec::new());
        for start in (0..self.count).step_by(chunk.max(1)) {
            let idx: Vec<usize> = (start..(start + chunk.max(1)).min(self.count)).collect();
            let (x, y) = genlab_data::batch_of(self.ds.as_ref(), &idx)?;
            let (x, y) = (x.to_device(self.device), y.map(|y| y.to_device(self.device)));
            let cond = if self.conditional() { y.as_ref() } else { None };
            outs.push(f(&x, cond)?.to_device(Device::Cpu));
            if let Some(y) = y {
                labels.push(y.to_device(Device::Cpu));
            }
        }
        let labels = (labels.len() == outs.len()).then(|| Tensor::cat(&labels, 0));
        Ok((Tensor::cat(&outs, 0), labels))
    }
}

/// The first `n` images of `ds` above their reconstructions through the posterior mean,
/// `[2n, c, h, w]` in [-1, 1]; for a VAE or a KL autoencoder run, whichever `run` is.
pub fn reconstructions(run: &Path, ds: Arc<dyn Dataset>, name: &str, n: usize, device: Device) -> Result<Tensor> {
    if crate::train_kl::is_kl_run(run)? {
        let (_vs, model, _) = crate::train_kl::load(run, device)?;
        let n = n.min(ds.len());
        if n == 0 {
            return Err(VaeError::Config(format!("{name}: no images to use")));
        }
        let (x, _) = genlab_data::batch_of(ds.as_ref(), &(0..n).collect::<Vec<_>>())?;
        let x = x.to_device(device);
        let r = crate::sample::reconstruct_kl(&model, &x)?;
        if r.size() != x.size() {
            return Err(VaeError::Shape(format!(
                "{name}: images {:?} reconstruct as {:?}: height and width must be multiples of {}",
                x.size(),
                r.size(),
                model.cfg.downsampling_factor()
            )));
        }
        return Ok(Tensor::cat(&[x, r], 0));
    }
    let r = RunOnData::open(run, ds, name, Some(n), device)?;
    let (x, y) = genlab_data::batch_of(r.ds.as_ref(), &(0..r.count).collect::<Vec<_>>())?;
    let x = x.to_device(device);
    let y = y.filter(|_| r.conditional()).map(|y| y.to_device(device));
    let rec = crate::sample::reconstruct(&r.model, &x, y.as_ref())?;
    Ok(Tensor::cat(&[x, rec], 0))
}

/// Pairs of image indices, `A:B,C:D` as text (`genlab vae interpolate --pairs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexPairs(pub Vec<(usize, usize)>);

impl std::str::FromStr for IndexPairs {
    type Err = VaeError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || VaeError::Config(format!("`{s}`: pairs are A:B image indices, comma-separated, e.g. 0:17,3:40"));
        let pair = |p: &str| -> Option<(usize, usize)> {
            let (a, b) = p.split_once(':')?;
            Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
        };
        s.split(',').map(|p| pair(p).ok_or_else(bad)).collect::<Result<_>>().map(IndexPairs)
    }
}

/// One row of `steps` decoded images per pair of image indices, along the latent path between
/// the pair's posterior means (spherical or linear).
pub fn interpolation_rows(r: &RunOnData, pairs: &[(usize, usize)], steps: i64, spherical: bool) -> Result<Tensor> {
    let mut rows = Vec::new();
    for &(a, b) in pairs {
        if a >= r.count || b >= r.count {
            return Err(VaeError::Config(format!("pair {a}:{b}: indices must be below {}", r.count)));
        }
        let (x, _) = genlab_data::batch_of(r.ds.as_ref(), &[a, b])?;
        let x = x.to_device(r.device);
        rows.push(crate::interpolate::interpolate(&r.model, &x.narrow(0, 0, 1), &x.narrow(0, 1, 1), steps, spherical)?);
    }
    if rows.is_empty() {
        return Err(VaeError::Config("no index pairs to interpolate between".into()));
    }
    Ok(Tensor::cat(&rows, 0))
}

/// Anomaly scores of every image, with the dataset's labels when it has them.
pub struct AnomalyScores {
    pub score: crate::anomaly::Score,
    pub scores: Vec<f64>,
    pub labels: Option<Vec<i64>>,
}

impl AnomalyScores {
    pub fn of(r: &RunOnData, score: crate::anomaly::Score, chunk: usize) -> Result<Self> {
        let (scores, labels) = r.map_chunks(chunk, |x, y| crate::anomaly::scores(&r.model, x, y, score))?;
        let scores = Vec::<f64>::try_from(scores.to_kind(Kind::Double))?;
        let labels = labels.map(Vec::<i64>::try_from).transpose()?;
        Ok(AnomalyScores { score, scores, labels })
    }

    /// `index,label,score` rows (the label empty for an unlabelled dataset).
    pub fn write_csv(&self, path: &Path) -> Result<()> {
        let io = |e: std::io::Error| VaeError::Io { path: path.to_path_buf(), source: e };
        let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
        writeln!(f, "index,label,score").map_err(io)?;
        for (i, s) in self.scores.iter().enumerate() {
            let label = self.labels.as_ref().map(|l| l[i].to_string()).unwrap_or_default();
            writeln!(f, "{i},{label},{s}").map_err(io)?;
        }
        f.flush().map_err(io)
    }

    /// The ROC-AUC of the score with the images of class `k` as the anomalies.
    pub fn roc_auc(&self, k: i64) -> Result<f64> {
        let Some(labels) = &self.labels else {
            return Err(VaeError::Config("--anomalous-class needs a labelled dataset".into()));
        };
        let positive: Vec<bool> = labels.iter().map(|&l| l == k).collect();
        crate::anomaly::roc_auc(&self.scores, &positive).ok_or_else(|| {
            VaeError::Config(format!("class {k} is absent from (or is all of) the scored images: no AUC"))
        })
    }
}

/// Posterior means of every image, `[count, latent]`, with the dataset's labels when it has them.
pub fn embeddings(r: &RunOnData, chunk: usize) -> Result<(Tensor, Option<Tensor>)> {
    r.map_chunks(chunk, |x, y| crate::embed::embed(&r.model, x, y))
}

/// Test accuracies of a logistic-regression probe trained on `train`'s latents and on its pixels.
pub struct ProbeAccuracy {
    pub latents: f64,
    pub pixels: f64,
}

/// Train linear probes on `train` (latents and pixels) and score them on `test`; both need labels.
pub fn linear_probes(train: &RunOnData, test: &RunOnData, chunk: usize) -> Result<ProbeAccuracy> {
    let need = |what: &str| VaeError::Config(format!("the probe needs labels in {what}"));
    let (z, y) = embeddings(train, chunk)?;
    let y = y.ok_or_else(|| need(&train.name))?;
    let (tz, ty) = embeddings(test, chunk)?;
    let ty = ty.ok_or_else(|| need(&test.name))?;
    let k = train.ds.num_classes().unwrap_or(2) as i64;
    let pixels = |r: &RunOnData| -> Result<Tensor> { Ok(r.map_chunks(chunk, |x, _| Ok(x.flatten(1, -1)))?.0) };
    Ok(ProbeAccuracy {
        latents: crate::embed::linear_probe(&z, &y, &tz, &ty, k, 300)?,
        pixels: crate::embed::linear_probe(&pixels(train)?, &y, &pixels(test)?, &ty, k, 300)?,
    })
}

/// Which pixels are known to `genlab vae impute`.
#[derive(Debug, Clone, PartialEq)]
pub enum MaskSpec {
    /// A centred square hiding this fraction of each side.
    Box(f64),
    /// Each pixel hidden with this probability (a fresh draw per chunk of images).
    Random(f64),
    /// A PNG of the images' size: white = known.
    File(PathBuf),
}

impl std::str::FromStr for MaskSpec {
    type Err = VaeError;
    /// `box[:FRACTION]` (default 0.5), `random[:P]` (default 0.5), or a PNG path.
    fn from_str(s: &str) -> Result<Self> {
        let (kind, arg) = s.split_once(':').map(|(k, a)| (k, Some(a))).unwrap_or((s, None));
        let number = || -> Result<f64> {
            arg.map(|a| a.parse::<f64>())
                .transpose()
                .map_err(|_| VaeError::Config(format!("mask {s}: the parameter must be a number")))
                .map(|v| v.unwrap_or(0.5))
        };
        Ok(match kind {
            "box" => MaskSpec::Box(number()?),
            "random" => MaskSpec::Random(number()?),
            _ => MaskSpec::File(PathBuf::from(s)),
        })
    }
}

impl MaskSpec {
    /// Masks for `n` images of `[c, h, w]` (1 = known); `draw` numbers the chunks of a random mask.
    fn masks(&self, file: Option<&Tensor>, [c, h, w]: [i64; 3], n: i64, seed: u64, draw: u64) -> Result<Tensor> {
        Ok(match (self, file) {
            (_, Some(m)) => m.expand([n, c, h, w], false).contiguous(),
            (MaskSpec::Box(f), _) => make_mask(MaskKind::Box { fraction: *f }, [n, c, h, w], seed)?,
            (_, None) => {
                let p = if let MaskSpec::Random(p) = self { *p } else { 0.5 };
                make_mask(MaskKind::Random { p }, [n, c, h, w], seed ^ draw)?
            }
        })
    }

    /// The mask image of a [`MaskSpec::File`], `[1, 1, h, w]`, checked against the images' size.
    fn read(&self, [h, w]: [i64; 2]) -> Result<Option<Tensor>> {
        let MaskSpec::File(path) = self else { return Ok(None) };
        let bad = |message: String| VaeError::Config(format!("mask {}: {message}", path.display()));
        let img = image::open(path).map_err(|e| bad(e.to_string()))?.to_luma8();
        if (img.height() as i64, img.width() as i64) != (h, w) {
            return Err(bad(format!("{}x{}, the images are {h}x{w}", img.height(), img.width())));
        }
        let v: Vec<f32> = img.pixels().map(|p| if p.0[0] >= 128 { 1.0 } else { 0.0 }).collect();
        Ok(Some(Tensor::from_slice(&v).view([1, 1, h, w])))
    }
}

/// What `genlab vae impute` measured: the mean squared error on the missing pixels ([-1, 1]
/// scale) of the VAE's imputation and of filling with the per-pixel mean of the same images.
pub struct ImputeReport {
    pub images: usize,
    pub mse: f64,
    pub mean_fill_mse: f64,
    /// Originals, masked inputs (missing pixels mid-grey) and imputations of the first 16, one row each.
    pub grid_rows: Tensor,
}

impl std::fmt::Display for ImputeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VAE {:.5}, mean fill {:.5} ({:.1}% lower)",
            self.mse,
            self.mean_fill_mse,
            100.0 * (1.0 - self.mse / self.mean_fill_mse)
        )
    }
}

/// Fill the pixels `mask` hides with `iters` rounds of the VAE, chunk by chunk.
pub fn impute_missing(r: &RunOnData, mask: &MaskSpec, iters: usize, chunk: usize, seed: u64) -> Result<ImputeReport> {
    let [c, h, w] = r.model.cfg.image_shape;
    let file = mask.read([h, w])?;
    let (all, _) = r.map_chunks(chunk, |x, _| Ok(x.shallow_clone()))?;
    let pixel_mean = all.mean_dim(0, true, Kind::Float);
    let (mut se_model, mut se_mean, mut missing, mut draw) = (0.0, 0.0, 0.0, 0u64);
    let mut grid = Vec::new();
    let _ = r.map_chunks(chunk, |x, y| {
        draw += 1;
        let m = mask.masks(file.as_ref(), [c, h, w], x.size()[0], seed, draw)?.to_device(x.device());
        let filled = crate::impute::impute(&r.model, x, &m, y, iters)?;
        let hole = m.ones_like() - &m;
        let k = hole.sum(Kind::Float).double_value(&[]);
        se_model += masked_mse(&filled, x, &m) * k;
        let mean_fill = x * &m + pixel_mean.to_device(x.device()) * &hole;
        se_mean += masked_mse(&mean_fill, x, &m) * k;
        missing += k;
        if grid.is_empty() {
            let n = x.size()[0].min(16);
            grid = vec![x.narrow(0, 0, n), (x * &m).narrow(0, 0, n), filled.narrow(0, 0, n)];
        }
        Ok(Tensor::zeros([1], (Kind::Float, x.device())))
    })?;
    Ok(ImputeReport {
        images: r.count,
        mse: se_model / missing.max(1.0),
        mean_fill_mse: se_mean / missing.max(1.0),
        grid_rows: Tensor::cat(&grid, 0),
    })
}

/// The negative ELBO and the IWAE-`k` bound on the negative log-likelihood, in nats and bits per dimension.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LikelihoodReport {
    pub images: usize,
    pub negative_elbo_nats: f64,
    pub negative_elbo_bits_per_dim: f64,
    pub iwae_k: usize,
    pub iwae_nll_bound_nats: f64,
    pub iwae_nll_bound_bits_per_dim: f64,
}

impl std::fmt::Display for LikelihoodReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} images: negative ELBO {:.3} nats ({:.4} bits/dim); IWAE-{} bound on NLL {:.3} nats ({:.4} bits/dim)",
            self.images,
            self.negative_elbo_nats,
            self.negative_elbo_bits_per_dim,
            self.iwae_k,
            self.iwae_nll_bound_nats,
            self.iwae_nll_bound_bits_per_dim
        )
    }
}

impl LikelihoodReport {
    fn new(model: &Vae, images: usize, iwae_sum: f64, elbo_sum: f64, k: usize) -> Self {
        let dims = model.cfg.data_dim();
        let (nll_1, nll_k) = (-elbo_sum / images as f64, -iwae_sum / images as f64);
        let bpd = |n| crate::loss::bits_per_dim(n, dims);
        LikelihoodReport {
            images,
            negative_elbo_nats: nll_1,
            negative_elbo_bits_per_dim: bpd(nll_1),
            iwae_k: k,
            iwae_nll_bound_nats: nll_k,
            iwae_nll_bound_bits_per_dim: bpd(nll_k),
        }
    }

    /// The bounds on a run's images (chunks of at most 200).
    pub fn of(r: &RunOnData, k: usize, chunk: usize) -> Result<Self> {
        let chunk = chunk.min(200);
        let bound = |k| -> Result<f64> {
            let (b, _) = r.map_chunks(chunk, |x, y| crate::likelihood::iwae_bound(&r.model, x, y, k))?;
            Ok(b.sum(Kind::Double).double_value(&[]))
        };
        Ok(Self::new(&r.model, r.count, bound(k)?, bound(1)?, k))
    }

    /// The bounds of an unconditional VAE on up to `max` of `images` (`[n, c, h, w]` in [-1, 1]).
    pub fn of_images(model: &Vae, images: &Tensor, k: usize, max: i64) -> Result<Self> {
        let n = images.size()[0].min(max);
        let (mut iwae, mut elbo) = (0.0, 0.0);
        for lo in (0..n).step_by(100) {
            let x = images.narrow(0, lo, 100.min(n - lo)).to_device(model.device());
            let b = |k| -> Result<f64> {
                Ok(tch::no_grad(|| crate::likelihood::iwae_bound(model, &x, None, k))?
                    .sum(Kind::Double)
                    .double_value(&[]))
            };
            iwae += b(k)?;
            elbo += b(1)?;
        }
        Ok(Self::new(model, n as usize, iwae, elbo, k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_specs_parse_with_their_defaults() {
        assert_eq!("box".parse::<MaskSpec>().unwrap(), MaskSpec::Box(0.5));
        assert_eq!("box:0.25".parse::<MaskSpec>().unwrap(), MaskSpec::Box(0.25));
        assert_eq!("random:0.8".parse::<MaskSpec>().unwrap(), MaskSpec::Random(0.8));
        assert_eq!("holes.png".parse::<MaskSpec>().unwrap(), MaskSpec::File("holes.png".into()));
        assert_eq!("0:4, 7:1".parse::<IndexPairs>().unwrap(), IndexPairs(vec![(0, 4), (7, 1)]));
        assert!("0-4".parse::<IndexPairs>().unwrap_err().to_string().contains("A:B"));
        let e = "random:lots".parse::<MaskSpec>().unwrap_err().to_string();
        assert!(e.contains("random:lots") && e.contains("number"), "{e}");
    }
}
