//! The FID Inception-v3 (Szegedy et al., "Rethinking the Inception Architecture for Computer
//! Vision", arXiv 1512.00567) as pytorch-fid 0.3.0 builds it (`pytorch_fid/inception.py`):
//! torchvision's `Inception3` with the blocks patched to match TensorFlow's 2015-12-05 graph
//! (`FIDInceptionA`, `FIDInceptionC`, `FIDInceptionE_1`, `FIDInceptionE_2`: average pools that do
//! not count padding, and a max pool in the last block) and a 1008-way `fc`.
//!
//! Parameter names are those of that state dict (`Mixed_6b.branch7x7_2.conv.weight`, ...), so the
//! published `pt_inception-2015-12-05-6726825d.pth`, converted to safetensors by
//! `cargo xtask download fid-inception`, loads by name.
//! Inputs go through pytorch-fid's `resize_input` and `normalize_input`: bilinear resize to 299 x 299
//! (`align_corners=False`) of the [0, 1] image, then `2 x - 1`. The features are the 2048-d final
//! average pool; the logits are those of the original Inception Score code (`inception_score.py`,
//! and torch-fidelity's `logits_unbiased`): the pool features times `fc.weight`, without the bias.
use crate::error::{EvalError, Result};
use crate::features::{FeatureNet, Features};
use std::path::{Path, PathBuf};
use tch::nn;
use tch::{Device, Kind, Tensor};

/// Name of the published weights file (the hash part is the start of its sha256, torch.hub's rule).
pub const WEIGHTS_PTH: &str = "pt_inception-2015-12-05-6726825d.pth";
/// Where it is published.
pub const WEIGHTS_URL: &str =
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth";
/// The converted file under the data folder.
pub const WEIGHTS_SAFETENSORS: &str = "fid-inception/pt_inception-2015-12-05-6726825d.safetensors";
/// Width of the pool features.
pub const FEATURE_DIM: i64 = 2048;
/// Classes of the `fc` layer (ImageNet's 1000 and 8 unused).
pub const NUM_CLASSES: i64 = 1008;

/// torchvision's `BasicConv2d`: conv without bias, BatchNorm (eps 0.001), ReLU.
#[derive(Debug)]
struct BasicConv2d {
    weight: Tensor,
    bn: nn::BatchNorm,
    stride: [i64; 2],
    padding: [i64; 2],
}

impl BasicConv2d {
    fn new(vs: nn::Path<'_>, c_in: i64, c_out: i64, kernel: [i64; 2], stride: i64, padding: [i64; 2]) -> Self {
        let weight =
            (&vs / "conv").var("weight", &[c_out, c_in, kernel[0], kernel[1]], nn::init::DEFAULT_KAIMING_UNIFORM);
        let bn = nn::batch_norm2d(&vs / "bn", c_out, nn::BatchNormConfig { eps: 1e-3, ..Default::default() });
        BasicConv2d { weight, bn, stride: [stride, stride], padding }
    }

    fn sq(vs: nn::Path<'_>, c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64) -> Self {
        Self::new(vs, c_in, c_out, [k, k], stride, [padding, padding])
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        xs.conv2d(&self.weight, None::<Tensor>, self.stride, self.padding, [1, 1], 1).apply_t(&self.bn, false).relu()
    }
}

/// TensorFlow's average pool: padding does not count in the average.
fn tf_avg_pool(xs: &Tensor) -> Tensor {
    xs.avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None)
}

#[derive(Debug)]
struct FidInceptionA {
    branch1x1: BasicConv2d,
    branch5x5_1: BasicConv2d,
    branch5x5_2: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3: BasicConv2d,
    branch_pool: BasicConv2d,
}

impl FidInceptionA {
    fn new(vs: nn::Path<'_>, c_in: i64, pool_features: i64) -> Self {
        FidInceptionA {
            branch1x1: BasicConv2d::sq(&vs / "branch1x1", c_in, 64, 1, 1, 0),
            branch5x5_1: BasicConv2d::sq(&vs / "branch5x5_1", c_in, 48, 1, 1, 0),
            branch5x5_2: BasicConv2d::sq(&vs / "branch5x5_2", 48, 64, 5, 1, 2),
            branch3x3dbl_1: BasicConv2d::sq(&vs / "branch3x3dbl_1", c_in, 64, 1, 1, 0),
            branch3x3dbl_2: BasicConv2d::sq(&vs / "branch3x3dbl_2", 64, 96, 3, 1, 1),
            branch3x3dbl_3: BasicConv2d::sq(&vs / "branch3x3dbl_3", 96, 96, 3, 1, 1),
            branch_pool: BasicConv2d::sq(&vs / "branch_pool", c_in, pool_features, 1, 1, 0),
        }
    }

    /// # Shapes
    /// - `xs`: [n, c_in, h, w] -> [n, 224 + pool_features, h, w]
    fn forward(&self, xs: &Tensor) -> Tensor {
        let b1 = self.branch1x1.forward(xs);
        let b5 = self.branch5x5_2.forward(&self.branch5x5_1.forward(xs));
        let b3 = self.branch3x3dbl_3.forward(&self.branch3x3dbl_2.forward(&self.branch3x3dbl_1.forward(xs)));
        let bp = self.branch_pool.forward(&tf_avg_pool(xs));
        Tensor::cat(&[b1, b5, b3, bp], 1)
    }
}

/// torchvision's `InceptionB` (Mixed_6a; unpatched in pytorch-fid).
#[derive(Debug)]
struct InceptionB {
    branch3x3: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3: BasicConv2d,
}

impl InceptionB {
    fn new(vs: nn::Path<'_>, c_in: i64) -> Self {
        InceptionB {
            branch3x3: BasicConv2d::sq(&vs / "branch3x3", c_in, 384, 3, 2, 0),
            branch3x3dbl_1: BasicConv2d::sq(&vs / "branch3x3dbl_1", c_in, 64, 1, 1, 0),
            branch3x3dbl_2: BasicConv2d::sq(&vs / "branch3x3dbl_2", 64, 96, 3, 1, 1),
            branch3x3dbl_3: BasicConv2d::sq(&vs / "branch3x3dbl_3", 96, 96, 3, 2, 0),
        }
    }

    /// # Shapes
    /// - `xs`: [n, c_in, h, w] -> [n, 480 + c_in, (h - 3) / 2 + 1, (w - 3) / 2 + 1]
    fn forward(&self, xs: &Tensor) -> Tensor {
        let b3 = self.branch3x3.forward(xs);
        let bd = self.branch3x3dbl_3.forward(&self.branch3x3dbl_2.forward(&self.branch3x3dbl_1.forward(xs)));
        let bp = xs.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false);
        Tensor::cat(&[b3, bd, bp], 1)
    }
}

#[derive(Debug)]
struct FidInceptionC {
    branch1x1: BasicConv2d,
    branch7x7: [BasicConv2d; 3],
    branch7x7dbl: [BasicConv2d; 5],
    branch_pool: BasicConv2d,
}

impl FidInceptionC {
    fn new(vs: nn::Path<'_>, c_in: i64, c7: i64) -> Self {
        let (row, col) = (([1, 7], [0, 3]), ([7, 1], [3, 0]));
        let conv =
            |name: &str, i: i64, o: i64, (k, p): ([i64; 2], [i64; 2])| BasicConv2d::new(&vs / name, i, o, k, 1, p);
        FidInceptionC {
            branch1x1: BasicConv2d::sq(&vs / "branch1x1", c_in, 192, 1, 1, 0),
            branch7x7: [
                BasicConv2d::sq(&vs / "branch7x7_1", c_in, c7, 1, 1, 0),
                conv("branch7x7_2", c7, c7, row),
                conv("branch7x7_3", c7, 192, col),
            ],
            branch7x7dbl: [
                BasicConv2d::sq(&vs / "branch7x7dbl_1", c_in, c7, 1, 1, 0),
                conv("branch7x7dbl_2", c7, c7, col),
                conv("branch7x7dbl_3", c7, c7, row),
                conv("branch7x7dbl_4", c7, c7, col),
                conv("branch7x7dbl_5", c7, 192, row),
            ],
            branch_pool: BasicConv2d::sq(&vs / "branch_pool", c_in, 192, 1, 1, 0),
        }
    }

    /// # Shapes
    /// - `xs`: [n, c_in, h, w] -> [n, 768, h, w]
    fn forward(&self, xs: &Tensor) -> Tensor {
        let chain = |convs: &[BasicConv2d]| convs.iter().fold(xs.shallow_clone(), |x, c| c.forward(&x));
        let b1 = self.branch1x1.forward(xs);
        let b7 = chain(&self.branch7x7);
        let bd = chain(&self.branch7x7dbl);
        let bp = self.branch_pool.forward(&tf_avg_pool(xs));
        Tensor::cat(&[b1, b7, bd, bp], 1)
    }
}

/// torchvision's `InceptionD` (Mixed_7a; unpatched in pytorch-fid).
#[derive(Debug)]
struct InceptionD {
    branch3x3: [BasicConv2d; 2],
    branch7x7x3: [BasicConv2d; 4],
}

impl InceptionD {
    fn new(vs: nn::Path<'_>, c_in: i64) -> Self {
        InceptionD {
            branch3x3: [
                BasicConv2d::sq(&vs / "branch3x3_1", c_in, 192, 1, 1, 0),
                BasicConv2d::sq(&vs / "branch3x3_2", 192, 320, 3, 2, 0),
            ],
            branch7x7x3: [
                BasicConv2d::sq(&vs / "branch7x7x3_1", c_in, 192, 1, 1, 0),
                BasicConv2d::new(&vs / "branch7x7x3_2", 192, 192, [1, 7], 1, [0, 3]),
                BasicConv2d::new(&vs / "branch7x7x3_3", 192, 192, [7, 1], 1, [3, 0]),
                BasicConv2d::sq(&vs / "branch7x7x3_4", 192, 192, 3, 2, 0),
            ],
        }
    }

    /// # Shapes
    /// - `xs`: [n, c_in, h, w] -> [n, 512 + c_in, (h - 3) / 2 + 1, (w - 3) / 2 + 1]
    fn forward(&self, xs: &Tensor) -> Tensor {
        let chain = |convs: &[BasicConv2d]| convs.iter().fold(xs.shallow_clone(), |x, c| c.forward(&x));
        let bp = xs.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false);
        Tensor::cat(&[chain(&self.branch3x3), chain(&self.branch7x7x3), bp], 1)
    }
}

/// `FIDInceptionE_1` (average pool without padding) or `FIDInceptionE_2` (max pool).
#[derive(Debug)]
struct FidInceptionE {
    branch1x1: BasicConv2d,
    branch3x3_1: BasicConv2d,
    branch3x3_2a: BasicConv2d,
    branch3x3_2b: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3a: BasicConv2d,
    branch3x3dbl_3b: BasicConv2d,
    branch_pool: BasicConv2d,
    max_pool: bool,
}

impl FidInceptionE {
    fn new(vs: nn::Path<'_>, c_in: i64, max_pool: bool) -> Self {
        let row = |name: &str, i: i64| BasicConv2d::new(&vs / name, i, 384, [1, 3], 1, [0, 1]);
        let col = |name: &str, i: i64| BasicConv2d::new(&vs / name, i, 384, [3, 1], 1, [1, 0]);
        FidInceptionE {
            branch1x1: BasicConv2d::sq(&vs / "branch1x1", c_in, 320, 1, 1, 0),
            branch3x3_1: BasicConv2d::sq(&vs / "branch3x3_1", c_in, 384, 1, 1, 0),
            branch3x3_2a: row("branch3x3_2a", 384),
            branch3x3_2b: col("branch3x3_2b", 384),
            branch3x3dbl_1: BasicConv2d::sq(&vs / "branch3x3dbl_1", c_in, 448, 1, 1, 0),
            branch3x3dbl_2: BasicConv2d::sq(&vs / "branch3x3dbl_2", 448, 384, 3, 1, 1),
            branch3x3dbl_3a: row("branch3x3dbl_3a", 384),
            branch3x3dbl_3b: col("branch3x3dbl_3b", 384),
            branch_pool: BasicConv2d::sq(&vs / "branch_pool", c_in, 192, 1, 1, 0),
            max_pool,
        }
    }

    /// # Shapes
    /// - `xs`: [n, c_in, h, w] -> [n, 2048, h, w]
    fn forward(&self, xs: &Tensor) -> Tensor {
        let b1 = self.branch1x1.forward(xs);
        let b3 = self.branch3x3_1.forward(xs);
        let b3 = Tensor::cat(&[self.branch3x3_2a.forward(&b3), self.branch3x3_2b.forward(&b3)], 1);
        let bd = self.branch3x3dbl_2.forward(&self.branch3x3dbl_1.forward(xs));
        let bd = Tensor::cat(&[self.branch3x3dbl_3a.forward(&bd), self.branch3x3dbl_3b.forward(&bd)], 1);
        let pooled = if self.max_pool { xs.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false) } else { tf_avg_pool(xs) };
        let bp = self.branch_pool.forward(&pooled);
        Tensor::cat(&[b1, b3, bd, bp], 1)
    }
}

/// pytorch-fid's FID Inception-v3 up to the final average pool, and its `fc` weights for logits.
#[derive(Debug)]
pub struct FidInceptionV3 {
    stem: Vec<BasicConv2d>,
    stem2: Vec<BasicConv2d>,
    mixed_5: Vec<FidInceptionA>,
    mixed_6a: InceptionB,
    mixed_6: Vec<FidInceptionC>,
    mixed_7a: InceptionD,
    mixed_7b: FidInceptionE,
    mixed_7c: FidInceptionE,
    fc_weight: Tensor,
    device: Device,
}

impl FidInceptionV3 {
    /// The network with `vs`'s default initialisation; load weights into `vs` to use it.
    pub fn new(vs: nn::Path<'_>) -> Self {
        let fc = &vs / "fc";
        // `fc.bias` is part of the state dict (so the file loads by name) but the logits leave it out.
        let _ = fc.var("bias", &[NUM_CLASSES], nn::Init::Const(0.0));
        FidInceptionV3 {
            stem: vec![
                BasicConv2d::sq(&vs / "Conv2d_1a_3x3", 3, 32, 3, 2, 0),
                BasicConv2d::sq(&vs / "Conv2d_2a_3x3", 32, 32, 3, 1, 0),
                BasicConv2d::sq(&vs / "Conv2d_2b_3x3", 32, 64, 3, 1, 1),
            ],
            stem2: vec![
                BasicConv2d::sq(&vs / "Conv2d_3b_1x1", 64, 80, 1, 1, 0),
                BasicConv2d::sq(&vs / "Conv2d_4a_3x3", 80, 192, 3, 1, 0),
            ],
            mixed_5: vec![
                FidInceptionA::new(&vs / "Mixed_5b", 192, 32),
                FidInceptionA::new(&vs / "Mixed_5c", 256, 64),
                FidInceptionA::new(&vs / "Mixed_5d", 288, 64),
            ],
            mixed_6a: InceptionB::new(&vs / "Mixed_6a", 288),
            mixed_6: vec![
                FidInceptionC::new(&vs / "Mixed_6b", 768, 128),
                FidInceptionC::new(&vs / "Mixed_6c", 768, 160),
                FidInceptionC::new(&vs / "Mixed_6d", 768, 160),
                FidInceptionC::new(&vs / "Mixed_6e", 768, 192),
            ],
            mixed_7a: InceptionD::new(&vs / "Mixed_7a", 768),
            mixed_7b: FidInceptionE::new(&vs / "Mixed_7b", 1280, false),
            mixed_7c: FidInceptionE::new(&vs / "Mixed_7c", 2048, true),
            fc_weight: fc.var("weight", &[NUM_CLASSES, FEATURE_DIM], nn::init::DEFAULT_KAIMING_UNIFORM),
            device: vs.device(),
        }
    }

    /// Pool features and logits of images in [0, 1], as pytorch-fid's `InceptionV3` with
    /// `resize_input=True, normalize_input=True` (output block 3).
    ///
    /// # Shapes
    /// - `xs`: [n, 3, h, w] in [0, 1] -> ([n, 2048], [n, 1008])
    pub fn forward_unit(&self, xs: &Tensor) -> (Tensor, Tensor) {
        let x = xs.upsample_bilinear2d([299, 299], false, None, None) * 2.0 - 1.0;
        let mut x = self.stem.iter().fold(x, |x, c| c.forward(&x));
        x = x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false);
        x = self.stem2.iter().fold(x, |x, c| c.forward(&x));
        x = x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false);
        x = self.mixed_5.iter().fold(x, |x, b| b.forward(&x));
        x = self.mixed_6a.forward(&x);
        x = self.mixed_6.iter().fold(x, |x, b| b.forward(&x));
        x = self.mixed_7c.forward(&self.mixed_7b.forward(&self.mixed_7a.forward(&x)));
        let pool = x.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
        let logits = pool.matmul(&self.fc_weight.tr());
        (pool, logits)
    }

    /// Load the converted FID weights from `path` (every missing, unexpected or mis-shaped name is reported).
    pub fn load(path: &Path, device: Device) -> Result<(nn::VarStore, Self)> {
        if !path.is_file() {
            return Err(EvalError::file(
                path,
                "no FID Inception weights here; run `cargo xtask download fid-inception` (or pass --from FILE \
                 with a copy of pt_inception-2015-12-05-6726825d.pth)",
            ));
        }
        let vs = nn::VarStore::new(device);
        let net = FidInceptionV3::new(vs.root());
        genlab_core::checkpoint::load_var_store(&vs, path)?;
        Ok((vs, net))
    }
}

/// Where the converted weights live: `$GENLAB_DATA_DIR` or `~/.cache/genlab`, then
/// [`WEIGHTS_SAFETENSORS`].
pub fn default_weights_path() -> Option<PathBuf> {
    genlab_data::builtin::data_dir().map(|d| d.join(WEIGHTS_SAFETENSORS))
}

impl FeatureNet for FidInceptionV3 {
    fn name(&self) -> String {
        "inception-v3-fid".into()
    }
    fn dim(&self) -> i64 {
        FEATURE_DIM
    }
    /// Grey images are repeated to three channels.
    fn embed(&self, images: &Tensor) -> Result<Features> {
        let size = images.size();
        let x = match size.as_slice() {
            [_, 1, _, _] => images.repeat([1, 3, 1, 1]),
            [_, 3, _, _] => images.shallow_clone(),
            _ => {
                return Err(EvalError::Shape(format!(
                    "the Inception network takes [n, 1 or 3, h, w] images, got {size:?}"
                )))
            }
        };
        let x = ((x.to_device(self.device).to_kind(Kind::Float) + 1.0) * 0.5).clamp(0.0, 1.0);
        let (pool, logits) = tch::no_grad(|| self.forward_unit(&x));
        Ok(Features { features: pool, logits: Some(logits) })
    }
}
