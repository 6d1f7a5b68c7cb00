//! The image history of Shrivastava et al. (arXiv 1612.07828) as CycleGAN uses it, after
//! `util/image_pool.py` of junyanz/pytorch-CycleGAN-and-pix2pix: the discriminators see a mix of
//! the newest generated images and older ones.
use genlab_core::seed::Rng;
use tch::Tensor;

/// The paper's pool size.
pub const POOL_SIZE: usize = 50;

/// A buffer of up to `size` generated images.
#[derive(Debug)]
pub struct ImagePool {
    size: usize,
    images: Vec<Tensor>,
}

impl ImagePool {
    pub fn new(size: usize) -> Self {
        ImagePool { size, images: Vec::with_capacity(size) }
    }

    /// Images held.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.size
    }

    /// For each image of `images` in order: while the pool is not full, store it and return it;
    /// once full, with probability 1/2 return a stored image chosen uniformly and store the new
    /// one in its place, else return the new image. A pool of size 0 returns its input.
    ///
    /// # Shapes
    /// - `images`: [n, c, h, w] -> [n, c, h, w] (detached)
    pub fn query(&mut self, images: &Tensor, rng: &mut Rng) -> Tensor {
        let images = images.detach();
        if self.size == 0 {
            return images;
        }
        let n = images.size()[0];
        let mut out = Vec::with_capacity(n as usize);
        for i in 0..n {
            let image = images.get(i).copy();
            if self.images.len() < self.size {
                self.images.push(image.shallow_clone());
                out.push(image);
            } else if rng.next_f64() > 0.5 {
                let k = rng.below(self.size as u64) as usize;
                out.push(std::mem::replace(&mut self.images[k], image));
            } else {
                out.push(image);
            }
        }
        Tensor::stack(&out, 0)
    }

    /// The stored images, [len, c, h, w], for checkpoints; None when empty.
    pub fn to_tensor(&self) -> Option<Tensor> {
        (!self.images.is_empty()).then(|| Tensor::stack(&self.images, 0))
    }

    /// Replace the contents with the first `size` images of `stored` ([k, c, h, w]).
    pub fn load(&mut self, stored: &Tensor) {
        let k = (stored.size()[0] as usize).min(self.size);
        self.images = (0..k as i64).map(|i| stored.get(i).copy()).collect();
    }
}
