//! The dataset abstraction: a length and items (a u8 image C x H x W, an optional label).
use crate::error::{DataError, Result};
use std::sync::Arc;

/// One example: pixels in `C x H x W` order (0-255) and an optional class label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub image: Vec<u8>,
    pub label: Option<i64>,
}

/// A random-access image dataset. Implementations are cheap to share between threads.
pub trait Dataset: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `[channels, height, width]` of every item.
    fn shape(&self) -> [usize; 3];
    /// Number of classes, when items carry labels.
    fn num_classes(&self) -> Option<usize>;
    /// Class names indexed by label, where the source names them (folder names, CIFAR-10's
    /// `batches.meta.txt`).
    fn class_names(&self) -> Option<Vec<String>> {
        None
    }
    fn get(&self, index: usize) -> Result<Item>;
    /// A one-line description (source, size).
    fn describe(&self) -> String;
}

impl std::fmt::Debug for dyn Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// A dataset held in memory (the built-in sets, IDX files, converted folders).
#[derive(Debug, Clone)]
pub struct InMemory {
    pub name: String,
    pub shape: [usize; 3],
    /// `len * C * H * W` bytes.
    pub pixels: Arc<Vec<u8>>,
    pub labels: Option<Arc<Vec<i64>>>,
    pub num_classes: Option<usize>,
    pub class_names: Option<Vec<String>>,
}

impl InMemory {
    pub fn new(name: impl Into<String>, shape: [usize; 3], pixels: Vec<u8>, labels: Option<Vec<i64>>) -> Result<Self> {
        let name = name.into();
        let per = shape.iter().product::<usize>();
        if per == 0 || pixels.len() % per != 0 {
            return Err(DataError::Invalid(format!(
                "{name}: {} bytes is not a whole number of {shape:?} images",
                pixels.len()
            )));
        }
        let n = pixels.len() / per;
        if let Some(l) = &labels {
            if l.len() != n {
                return Err(DataError::Invalid(format!("{name}: {} labels for {n} images", l.len())));
            }
            if let Some(bad) = l.iter().find(|&&x| x < 0) {
                return Err(DataError::Invalid(format!("{name}: negative label {bad}")));
            }
        }
        let num_classes = labels.as_ref().map(|l| l.iter().copied().max().map(|m| m as usize + 1).unwrap_or(0));
        Ok(InMemory {
            name,
            shape,
            pixels: Arc::new(pixels),
            labels: labels.map(Arc::new),
            num_classes,
            class_names: None,
        })
    }

    /// Name the classes (label `i` is `names[i]`); this also fixes the class count, so a
    /// class with no examples still counts.
    pub fn with_class_names(mut self, names: Vec<String>) -> Result<Self> {
        if self.labels.is_none() {
            return Err(DataError::Invalid(format!("{}: class names for an unlabelled dataset", self.name)));
        }
        if let Some(k) = self.num_classes.filter(|&k| k > names.len()) {
            return Err(DataError::Invalid(format!(
                "{}: {} class names for labels up to {}",
                self.name,
                names.len(),
                k - 1
            )));
        }
        self.num_classes = Some(names.len());
        self.class_names = Some(names);
        Ok(self)
    }

    /// Keep only the items whose index passes `keep` (e.g. to hold out a class).
    pub fn filter(&self, keep: impl Fn(usize, Option<i64>) -> bool) -> Result<Self> {
        let per = self.shape.iter().product::<usize>();
        let mut px = Vec::new();
        let mut labels = self.labels.as_ref().map(|_| Vec::new());
        for i in 0..self.len() {
            let l = self.labels.as_ref().map(|l| l[i]);
            if keep(i, l) {
                px.extend_from_slice(&self.pixels[i * per..(i + 1) * per]);
                if let (Some(v), Some(l)) = (labels.as_mut(), l) {
                    v.push(l);
                }
            }
        }
        let mut out = InMemory::new(self.name.clone(), self.shape, px, labels)?;
        out.num_classes = self.num_classes;
        out.class_names = self.class_names.clone();
        Ok(out)
    }
}

impl Dataset for InMemory {
    fn len(&self) -> usize {
        self.pixels.len() / self.shape.iter().product::<usize>()
    }
    fn shape(&self) -> [usize; 3] {
        self.shape
    }
    fn num_classes(&self) -> Option<usize> {
        self.num_classes
    }
    fn class_names(&self) -> Option<Vec<String>> {
        self.class_names.clone()
    }
    fn get(&self, index: usize) -> Result<Item> {
        let len = self.len();
        if index >= len {
            return Err(DataError::Index { index, len });
        }
        let per = self.shape.iter().product::<usize>();
        Ok(Item {
            image: self.pixels[index * per..(index + 1) * per].to_vec(),
            label: self.labels.as_ref().map(|l| l[index]),
        })
    }
    fn describe(&self) -> String {
        let [c, h, w] = self.shape;
        format!(
            "{}: {} images, {c}x{h}x{w}{}",
            self.name,
            self.len(),
            self.num_classes.map(|k| format!(", {k} classes")).unwrap_or_default()
        )
    }
}

/// A view of some items of another dataset (a class held out, a split).
#[derive(Clone)]
pub struct Subset {
    inner: Arc<dyn Dataset>,
    indices: Arc<Vec<usize>>,
    what: String,
}

impl Subset {
    pub fn new(inner: Arc<dyn Dataset>, indices: Vec<usize>, what: impl Into<String>) -> Result<Self> {
        let len = inner.len();
        if let Some(&bad) = indices.iter().find(|&&i| i >= len) {
            return Err(DataError::Index { index: bad, len });
        }
        Ok(Subset { inner, indices: Arc::new(indices), what: what.into() })
    }

    /// Every item whose label is not `class` (reads each label once).
    pub fn without_class(inner: Arc<dyn Dataset>, class: i64) -> Result<Self> {
        let k = inner.num_classes().ok_or_else(|| {
            DataError::Invalid(format!("{}: has no labels, so no class can be left out", inner.describe()))
        })?;
        if class < 0 || class as usize >= k {
            return Err(DataError::Invalid(format!("class {class} is not in 0..{k} ({})", inner.describe())));
        }
        let mut keep = Vec::with_capacity(inner.len());
        for i in 0..inner.len() {
            if inner.get(i)?.label != Some(class) {
                keep.push(i);
            }
        }
        Subset::new(inner, keep, format!("without class {class}"))
    }

    /// The first `n` items of every class, in dataset order (a small labelled training set,
    /// e.g. to measure data augmentation). Classes with fewer items keep all they have.
    pub fn per_class(inner: Arc<dyn Dataset>, n: usize) -> Result<Self> {
        let k = inner.num_classes().ok_or_else(|| {
            DataError::Invalid(format!("{}: has no labels, so it cannot be cut per class", inner.describe()))
        })?;
        if n == 0 {
            return Err(DataError::Invalid("a per-class subset needs at least 1 image per class".into()));
        }
        let mut taken = vec![0usize; k];
        let mut keep = Vec::with_capacity(n * k);
        for i in 0..inner.len() {
            if keep.len() == n * k {
                break;
            }
            match inner.get(i)?.label {
                Some(l) if l >= 0 && (l as usize) < k => {
                    if taken[l as usize] < n {
                        taken[l as usize] += 1;
                        keep.push(i);
                    }
                }
                other => {
                    return Err(DataError::Invalid(format!(
                        "{}: item {i} has label {other:?}, outside 0..{k}",
                        inner.describe()
                    )))
                }
            }
        }
        Subset::new(inner, keep, format!("first {n} per class"))
    }

    /// The first `n` items (all of them when there are fewer).
    pub fn first(inner: Arc<dyn Dataset>, n: usize) -> Result<Self> {
        let keep = (0..n.min(inner.len())).collect();
        Subset::new(inner, keep, format!("first {n}"))
    }
}

/// Several datasets of one image shape, one after another (real images and synthetic ones,
/// two folders). Either every part has labels or none has.
#[derive(Clone)]
pub struct Concat {
    parts: Vec<Arc<dyn Dataset>>,
    /// Index of the first item of each part, and the total at the end.
    starts: Vec<usize>,
    num_classes: Option<usize>,
}

impl Concat {
    pub fn new(parts: Vec<Arc<dyn Dataset>>) -> Result<Self> {
        let first = parts.first().ok_or_else(|| DataError::Invalid("nothing to concatenate".into()))?;
        let shape = first.shape();
        let labelled = first.num_classes().is_some();
        let mut starts = vec![0];
        let mut num_classes = None;
        for p in &parts {
            if p.shape() != shape {
                return Err(DataError::Invalid(format!(
                    "cannot join {} (images {:?}) to {} (images {shape:?}): image shapes differ",
                    p.describe(),
                    p.shape(),
                    first.describe()
                )));
            }
            if p.num_classes().is_some() != labelled {
                return Err(DataError::Invalid(format!(
                    "cannot join {} to {}: one has labels and the other not",
                    p.describe(),
                    first.describe()
                )));
            }
            num_classes = num_classes.max(p.num_classes());
            starts.push(starts[starts.len() - 1] + p.len());
        }
        Ok(Concat { parts, starts, num_classes })
    }
}

impl std::fmt::Debug for Concat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Dataset for Concat {
    fn len(&self) -> usize {
        self.starts[self.starts.len() - 1]
    }
    fn shape(&self) -> [usize; 3] {
        self.parts[0].shape()
    }
    fn num_classes(&self) -> Option<usize> {
        self.num_classes
    }
    fn class_names(&self) -> Option<Vec<String>> {
        self.parts.iter().find_map(|p| p.class_names().filter(|n| Some(n.len()) == self.num_classes))
    }
    fn get(&self, index: usize) -> Result<Item> {
        let len = self.len();
        if index >= len {
            return Err(DataError::Index { index, len });
        }
        // The part whose start is the last one at or before `index`.
        let part = self.starts.partition_point(|&s| s <= index) - 1;
        self.parts[part].get(index - self.starts[part])
    }
    fn describe(&self) -> String {
        let names: Vec<String> = self.parts.iter().map(|p| p.describe()).collect();
        format!("{} joined ({} images)", names.join(" + "), self.len())
    }
}

impl std::fmt::Debug for Subset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn shape(&self) -> [usize; 3] {
        self.inner.shape()
    }
    fn num_classes(&self) -> Option<usize> {
        self.inner.num_classes()
    }
    fn class_names(&self) -> Option<Vec<String>> {
        self.inner.class_names()
    }
    fn get(&self, index: usize) -> Result<Item> {
        let len = self.indices.len();
        let i = *self.indices.get(index).ok_or(DataError::Index { index, len })?;
        self.inner.get(i)
    }
    fn describe(&self) -> String {
        format!("{} ({}: {} images)", self.inner.describe(), self.what, self.len())
    }
}

/// Items `indices` as a float batch in [-1, 1] and their labels.
///
/// # Shapes
/// - returns ([n, c, h, w] f32, [n] i64 when the dataset has labels)
pub fn batch_of(ds: &dyn Dataset, indices: &[usize]) -> Result<(tch::Tensor, Option<tch::Tensor>)> {
    let [c, h, w] = ds.shape();
    let mut px = Vec::with_capacity(indices.len() * c * h * w);
    let mut labels = Vec::with_capacity(indices.len());
    for &i in indices {
        let it = ds.get(i)?;
        px.extend_from_slice(&it.image);
        if let Some(l) = it.label {
            labels.push(l);
        }
    }
    let n = indices.len() as i64;
    let x =
        tch::Tensor::from_slice(&px).view([n, c as i64, h as i64, w as i64]).to_kind(tch::Kind::Float) / 127.5 - 1.0;
    let y = (labels.len() == indices.len() && !labels.is_empty()).then(|| tch::Tensor::from_slice(&labels));
    Ok((x, y))
}

#[cfg(test)]
mod subset_tests {
    use super::*;

    #[test]
    fn subsets_hold_out_a_class_and_batch() {
        let ds: Arc<dyn Dataset> = Arc::new(
            InMemory::new("t", [1, 1, 2], (0..20).collect(), Some(vec![0, 1, 2, 0, 1, 2, 0, 1, 2, 0])).unwrap(),
        );
        let s = Subset::without_class(ds.clone(), 1).unwrap();
        assert_eq!(s.len(), 7);
        assert!((0..s.len()).all(|i| s.get(i).unwrap().label != Some(1)));
        assert!(Subset::without_class(ds.clone(), 3).unwrap_err().to_string().contains("not in 0..3"));
        assert!(Subset::new(ds.clone(), vec![0, 10], "x").is_err());
        let (x, y) = batch_of(&s, &[0, 1]).unwrap();
        assert_eq!(x.size(), [2, 1, 1, 2]);
        assert_eq!(Vec::<i64>::try_from(y.unwrap()).unwrap(), vec![0, 2]);
        assert!((x.double_value(&[0, 0, 0, 0]) + 1.0).abs() < 1e-6);
    }

    #[test]
    fn per_class_first_and_concat() {
        let labels = vec![0, 1, 2, 0, 1, 2, 0, 1, 2, 0];
        let ds: Arc<dyn Dataset> = Arc::new(InMemory::new("t", [1, 1, 2], (0..20).collect(), Some(labels)).unwrap());
        let s = Subset::per_class(ds.clone(), 2).unwrap();
        let got: Vec<i64> = (0..s.len()).map(|i| s.get(i).unwrap().label.unwrap()).collect();
        assert_eq!(got, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(Subset::per_class(ds.clone(), 5).unwrap().len(), 10);
        assert!(Subset::per_class(ds.clone(), 0).is_err());
        assert_eq!(Subset::first(ds.clone(), 3).unwrap().len(), 3);
        assert_eq!(Subset::first(ds.clone(), 30).unwrap().len(), 10);

        let extra: Arc<dyn Dataset> = Arc::new(InMemory::new("x", [1, 1, 2], vec![7; 6], Some(vec![4, 4, 4])).unwrap());
        let c = Concat::new(vec![Arc::new(s), extra]).unwrap();
        assert_eq!(c.len(), 9);
        assert_eq!(c.num_classes(), Some(5));
        assert_eq!(c.get(0).unwrap().image, vec![0, 1]);
        assert_eq!(c.get(5).unwrap().label, Some(2));
        assert_eq!(c.get(6).unwrap(), Item { image: vec![7, 7], label: Some(4) });
        assert!(c.get(9).is_err());

        let other_shape: Arc<dyn Dataset> =
            Arc::new(InMemory::new("y", [1, 2, 2], vec![0; 8], Some(vec![0, 1])).unwrap());
        let e = Concat::new(vec![ds.clone(), other_shape]).unwrap_err().to_string();
        assert!(e.contains("image shapes differ"), "{e}");
        let unlabelled: Arc<dyn Dataset> = Arc::new(InMemory::new("z", [1, 1, 2], vec![0; 4], None).unwrap());
        let e = Concat::new(vec![ds, unlabelled]).unwrap_err().to_string();
        assert!(e.contains("labels"), "{e}");
    }
}
