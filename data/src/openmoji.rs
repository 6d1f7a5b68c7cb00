//! OpenMoji as two unlabelled image domains for unpaired translation: `openmoji-color`
//! (the coloured emoji) and `openmoji-black` (the same emoji as black line art).
//!
//! Source: the npm package `openmoji` 17.0.0 (<https://www.npmjs.com/package/openmoji>,
//! <https://github.com/hfg-gmuend/openmoji>): OpenMoji, the open-source emoji and icon project
//! (HfG Schwäbisch Gmünd), CC BY-SA 4.0. It draws 4,495 emoji twice, under `color/svg/*.svg` and
//! `black/svg/*.svg` with the same file names, each on a 72x72 viewBox. Rasterised with `resvg`
//! (<https://github.com/linebender/resvg>).
//!
//! - Names: `openmoji-color[@SIZE]`, `openmoji-black[@SIZE]`; `SIZE` is the side in pixels
//!   ([`MIN_SIZE`]..=[`MAX_SIZE`], default [`DEFAULT_SIZE`]), e.g. `openmoji-color@32`.
//!   Through [`crate::open_with`], `OpenOptions::size` (square) may give the size instead,
//!   `OpenOptions::channels` picks 1 or 3 and `OpenOptions::skip_bad` applies.
//! - Pixels: each SVG is scaled to fit the square (aspect kept, centred), composited over white
//!   and, by default, kept RGB for both domains, so a translation model maps 3 channels to 3
//!   channels in either direction (the black domain is then grey in all three channels).
//!   With 1 channel, both are reduced to luma (Rec. 709, as the `image` crate and image folders do).
//! - Order: items are sorted by file name, so item `i` of the colour and the black domain is the
//!   same emoji. Training on unpaired data should not use that; [`openmoji_pairs`] exposes it
//!   for measuring translation quality against the true pairs.
//! - Rasterising happens once, at open, in parallel (rayon), and the pixels stay in memory
//!   (4,495 x 3 x 64 x 64 bytes is 55 MB).
//! - Where the SVGs are: `$GENLAB_OPENMOJI_DIR/{color,black}/svg` when that variable is set,
//!   else `<data dir>/openmoji-npm/node_modules/openmoji/{color,black}/svg`, where
//!   `cargo xtask setup` installs the package with npm.
use crate::data_dir;
use crate::dataset::{Dataset, InMemory, Item};
use crate::error::{DataError, Result};
use rayon::prelude::*;
use resvg::{tiny_skia, usvg};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The package version the datasets are built from (and `cargo xtask setup` installs).
pub const VERSION: &str = "17.0.0";
pub const DEFAULT_SIZE: usize = 64;
pub const MIN_SIZE: usize = 4;
/// 4,495 x 3 x 256 x 256 bytes is already 884 MB in memory.
pub const MAX_SIZE: usize = 256;
/// The environment variable naming a folder that holds `color/svg` and `black/svg`.
pub const DIR_VAR: &str = "GENLAB_OPENMOJI_DIR";

/// Which drawing of the emoji.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Color,
    Black,
}

impl Style {
    /// The package's folder name (`color`, `black`).
    pub fn folder(self) -> &'static str {
        match self {
            Style::Color => "color",
            Style::Black => "black",
        }
    }
}

/// How to rasterise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenMojiOptions {
    /// Side of the square output in pixels.
    pub size: usize,
    /// 3 (RGB, the default for both domains) or 1 (luma).
    pub channels: usize,
    /// Leave SVGs that do not parse out (and list them, [`OpenMoji::skipped`]) instead of failing.
    pub skip_bad: bool,
}

impl Default for OpenMojiOptions {
    fn default() -> Self {
        OpenMojiOptions { size: DEFAULT_SIZE, channels: 3, skip_bad: false }
    }
}

impl OpenMojiOptions {
    fn check(&self) -> Result<()> {
        if !(MIN_SIZE..=MAX_SIZE).contains(&self.size) {
            return Err(DataError::Invalid(format!(
                "openmoji: size {} is outside {MIN_SIZE}..={MAX_SIZE} pixels",
                self.size
            )));
        }
        if !matches!(self.channels, 1 | 3) {
            return Err(DataError::Invalid(format!(
                "openmoji: {} channels requested; OpenMoji gives 1 (grey) or 3 (RGB)",
                self.channels
            )));
        }
        Ok(())
    }
}

/// A dataset name this module answers to: `Some((style, size suffix))`, or an error for an
/// `openmoji-color@...` whose suffix is not a size; `None` for any other name.
pub fn parse_spec(spec: &str) -> Option<Result<(Style, Option<usize>)>> {
    let (base, suffix) = match spec.split_once('@') {
        Some((b, s)) => (b, Some(s)),
        None => (spec, None),
    };
    let style = match base {
        "openmoji-color" => Style::Color,
        "openmoji-black" => Style::Black,
        _ => return None,
    };
    let Some(s) = suffix else { return Some(Ok((style, None))) };
    Some(match s.parse::<usize>() {
        Ok(n) if (MIN_SIZE..=MAX_SIZE).contains(&n) => Ok((style, Some(n))),
        _ => Err(DataError::Invalid(format!(
            "`{spec}`: the size suffix must be a whole number of pixels in {MIN_SIZE}..={MAX_SIZE}, \
             e.g. {base}@32 (without a suffix the size is {DEFAULT_SIZE})"
        ))),
    })
}

/// The options a CLI spec and [`crate::OpenOptions`] ask for together.
pub(crate) fn options_for(spec: &str, suffix: Option<usize>, opts: &crate::OpenOptions) -> Result<OpenMojiOptions> {
    let size = match (suffix, opts.size) {
        (s, None) => s.unwrap_or(DEFAULT_SIZE),
        (None, Some([h, w])) if h == w => h,
        (Some(s), Some([h, w])) if h == s && w == s => s,
        (_, Some([h, w])) => {
            return Err(DataError::Invalid(format!(
                "`{spec}`: OpenMoji is rendered square at one size; {h}x{w} was asked for{}",
                suffix.map(|s| format!(" beside the suffix @{s}")).unwrap_or_default()
            )))
        }
    };
    Ok(OpenMojiOptions { size, channels: opts.channels.unwrap_or(3), skip_bad: opts.skip_bad })
}

/// The folder holding `color/svg` and `black/svg`: `$GENLAB_OPENMOJI_DIR`, else the npm
/// install in the data folder. A `NotInstalled` error says how to get it.
pub fn package_dir() -> Result<PathBuf> {
    let (dir, from_var) = match std::env::var_os(DIR_VAR) {
        Some(d) => (PathBuf::from(d), true),
        None => match data_dir() {
            Some(d) => (d.join("openmoji-npm/node_modules/openmoji"), false),
            None => return Err(not_installed(None)),
        },
    };
    let complete = [Style::Color, Style::Black].iter().all(|s| svg_dir(&dir, *s).is_dir());
    if complete {
        Ok(dir)
    } else if from_var {
        Err(DataError::NotInstalled {
            name: "openmoji".into(),
            hint: format!("{DIR_VAR}={} has no color/svg and black/svg folders", dir.display()),
        })
    } else {
        Err(not_installed(Some(&dir)))
    }
}

fn not_installed(looked: Option<&Path>) -> DataError {
    let prefix = data_dir().map(|d| d.join("openmoji-npm").display().to_string());
    let prefix = prefix.as_deref().unwrap_or("<data dir>/openmoji-npm");
    DataError::NotInstalled {
        name: "openmoji".into(),
        hint: format!(
            "run `cargo xtask setup` (it needs npm), or `npm install --prefix {prefix} openmoji@{VERSION} \
             --no-audit --no-fund`, or set {DIR_VAR} to a folder holding color/svg and black/svg{}",
            looked.map(|d| format!(" (looked in {})", d.display())).unwrap_or_default()
        ),
    }
}

fn svg_dir(package: &Path, style: Style) -> PathBuf {
    package.join(style.folder()).join("svg")
}

/// File names of the `.svg` files in `dir` (hidden ones ignored), sorted.
fn svg_names(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let e = e.map_err(|e| DataError::io(dir, e))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else {
            return Err(DataError::format(e.path(), "file name is not UTF-8"));
        };
        if name.ends_with(".svg") && !name.starts_with('.') {
            names.push(name.to_string());
        }
    }
    names.sort();
    if names.is_empty() {
        return Err(DataError::format(dir, "no .svg files in this folder"));
    }
    Ok(names)
}

/// Rasterise an SVG document (`bytes`, read from `path`, which errors name) to a
/// `channels x size x size` image: scaled to fit, centred, composited over white.
///
/// # Shapes
/// - returns `channels * size * size` bytes in `C x H x W` order
pub fn render_svg(bytes: &[u8], path: &Path, size: usize, channels: usize) -> Result<Vec<u8>> {
    OpenMojiOptions { size, channels, skip_bad: false }.check()?;
    let mut opt = usvg::Options::default();
    // Renders stay self-contained: an `<image href>` never reads other files.
    opt.image_href_resolver.resolve_string = Box::new(|_, _| None);
    let tree = usvg::Tree::from_data(bytes, &opt)
        .map_err(|e| DataError::format(path, format!("not a renderable SVG: {e}")))?;
    let side = size as u32;
    let mut pixmap = tiny_skia::Pixmap::new(side, side)
        .ok_or_else(|| DataError::Invalid(format!("cannot make a {size}x{size} canvas")))?;
    let (w, h) = (tree.size().width(), tree.size().height());
    let scale = size as f32 / w.max(h);
    let (dx, dy) = ((size as f32 - w * scale) / 2.0, (size as f32 - h * scale) / 2.0);
    resvg::render(&tree, tiny_skia::Transform::from_row(scale, 0.0, 0.0, scale, dx, dy), &mut pixmap.as_mut());
    // Premultiplied RGBA over white: out = colour + (255 - alpha), which stays within 0..=255.
    let plane = size * size;
    let mut chw = vec![0u8; channels * plane];
    for (p, px) in pixmap.data().chunks_exact(4).enumerate() {
        let bg = 255 - px[3];
        let [r, g, b] = [px[0].saturating_add(bg), px[1].saturating_add(bg), px[2].saturating_add(bg)];
        if channels == 1 {
            chw[p] = ((2126 * r as u32 + 7152 * g as u32 + 722 * b as u32 + 5000) / 10000) as u8;
        } else {
            chw[p] = r;
            chw[plane + p] = g;
            chw[2 * plane + p] = b;
        }
    }
    Ok(chw)
}

/// One OpenMoji domain, rasterised (see the module docs).
#[derive(Debug, Clone)]
pub struct OpenMoji {
    images: InMemory,
    files: Vec<String>,
    skipped: Vec<(PathBuf, String)>,
}

/// Rasterise `names` from `dir`, in parallel, keeping each file's outcome.
fn render_dir(dir: &Path, names: &[String], opts: &OpenMojiOptions) -> Vec<Result<Vec<u8>>> {
    names
        .par_iter()
        .map(|n| {
            let path = dir.join(n);
            let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
            render_svg(&bytes, &path, opts.size, opts.channels)
        })
        .collect()
}

impl OpenMoji {
    /// `style` from the installed package ([`package_dir`]).
    pub fn open(style: Style, opts: &OpenMojiOptions) -> Result<Self> {
        Self::open_in(&package_dir()?, style, opts)
    }

    /// `style` from a package folder that holds `color/svg` and `black/svg`.
    pub fn open_in(package: &Path, style: Style, opts: &OpenMojiOptions) -> Result<Self> {
        opts.check()?;
        let dir = svg_dir(package, style);
        let names = svg_names(&dir)?;
        let rendered = render_dir(&dir, &names, opts);
        let keep = vec![true; names.len()];
        Self::assemble(style, &dir, names, rendered, &keep, opts)
    }

    /// The colour and black domains of the package in `package`, item `i` of one the same emoji
    /// as item `i` of the other. The two folders must hold the same file names; with `skip_bad`,
    /// an emoji unreadable in either domain is left out of both.
    pub fn pair_in(package: &Path, opts: &OpenMojiOptions) -> Result<(Self, Self)> {
        opts.check()?;
        let (cdir, bdir) = (svg_dir(package, Style::Color), svg_dir(package, Style::Black));
        let names = svg_names(&cdir)?;
        let black = svg_names(&bdir)?;
        if names != black {
            let only = |a: &[String], b: &[String]| a.iter().filter(|n| b.binary_search(n).is_err()).count();
            let first =
                names.iter().zip(&black).find(|(a, b)| a != b).map(|(a, b)| format!("; first difference: {a} vs {b}"));
            return Err(DataError::format(
                &bdir,
                format!(
                    "file names differ from {}: {} only in color, {} only in black{}",
                    cdir.display(),
                    only(&names, &black),
                    only(&black, &names),
                    first.unwrap_or_default()
                ),
            ));
        }
        let c = render_dir(&cdir, &names, opts);
        let b = render_dir(&bdir, &names, opts);
        let keep: Vec<bool> = c.iter().zip(&b).map(|(c, b)| c.is_ok() && b.is_ok()).collect();
        Ok((
            Self::assemble(Style::Color, &cdir, names.clone(), c, &keep, opts)?,
            Self::assemble(Style::Black, &bdir, names, b, &keep, opts)?,
        ))
    }

    /// Items `keep`s; the first failure (in name order) is the error unless `skip_bad`.
    fn assemble(
        style: Style,
        dir: &Path,
        names: Vec<String>,
        rendered: Vec<Result<Vec<u8>>>,
        keep: &[bool],
        opts: &OpenMojiOptions,
    ) -> Result<Self> {
        let mut pixels = Vec::with_capacity(names.len() * opts.channels * opts.size * opts.size);
        let mut files = Vec::with_capacity(names.len());
        let mut skipped = Vec::new();
        for ((name, r), &k) in names.into_iter().zip(rendered).zip(keep) {
            match r {
                Ok(px) if k => {
                    pixels.extend_from_slice(&px);
                    files.push(name);
                }
                Ok(_) => skipped.push((dir.join(&name), "its counterpart in the other domain is unreadable".into())),
                Err(e) if opts.skip_bad => skipped.push((dir.join(&name), e.to_string())),
                Err(e) => return Err(e),
            }
        }
        if files.is_empty() {
            return Err(DataError::format(dir, "no readable SVG files"));
        }
        let name = format!("openmoji-{}@{}", style.folder(), opts.size);
        let images = InMemory::new(name, [opts.channels, opts.size, opts.size], pixels, None)?;
        Ok(OpenMoji { images, files, skipped })
    }

    /// The SVG file name of each item (e.g. `1F600.svg`, named by code points).
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// SVGs left out with `skip_bad`, and why.
    pub fn skipped(&self) -> &[(PathBuf, String)] {
        &self.skipped
    }

    /// The rasterised pixels as a plain in-memory dataset.
    pub fn into_in_memory(self) -> InMemory {
        self.images
    }
}

impl Dataset for OpenMoji {
    fn len(&self) -> usize {
        self.images.len()
    }
    fn shape(&self) -> [usize; 3] {
        self.images.shape
    }
    fn num_classes(&self) -> Option<usize> {
        None
    }
    fn get(&self, index: usize) -> Result<Item> {
        self.images.get(index)
    }
    fn describe(&self) -> String {
        let skipped = match self.skipped.len() {
            0 => String::new(),
            n => format!(", {n} unreadable SVGs skipped"),
        };
        format!("{} (OpenMoji {VERSION}, CC BY-SA 4.0){skipped}", self.images.describe())
    }
}

/// The installed package's colour and black domains at `size` x `size`, RGB, where item `i` of
/// each is the same emoji: the true pairs, for measuring unpaired translation.
pub fn openmoji_pairs(size: usize) -> Result<(Arc<dyn Dataset>, Arc<dyn Dataset>)> {
    let (c, b) = OpenMoji::pair_in(&package_dir()?, &OpenMojiOptions { size, ..Default::default() })?;
    Ok((Arc::new(c), Arc::new(b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{any, proptest, ProptestConfig};
    use std::sync::OnceLock;

    /// The installed package, or `None` (with a message) when GENLAB_SKIP_NPM=1 says so.
    /// Otherwise a missing package fails the test: CI installs it with `cargo xtask setup`.
    fn package() -> Option<PathBuf> {
        match package_dir() {
            Ok(d) => Some(d),
            Err(e) if std::env::var("GENLAB_SKIP_NPM").as_deref() == Ok("1") => {
                eprintln!("GENLAB_SKIP_NPM=1: skipping an OpenMoji test: {e}");
                None
            }
            Err(e) => panic!("{e}\n(set GENLAB_SKIP_NPM=1 to skip the OpenMoji tests instead)"),
        }
    }

    /// Both domains at the default size, rendered once for all the tests that need them.
    fn pair64() -> Option<&'static (OpenMoji, OpenMoji)> {
        static PAIR: OnceLock<(OpenMoji, OpenMoji)> = OnceLock::new();
        let dir = package()?;
        Some(PAIR.get_or_init(|| {
            let t = std::time::Instant::now();
            let p = OpenMoji::pair_in(&dir, &OpenMojiOptions::default()).unwrap();
            eprintln!("openmoji: both domains at 64x64 in {:.2} s", t.elapsed().as_secs_f64());
            p
        }))
    }

    fn item(d: &OpenMoji, file: &str) -> Vec<u8> {
        let i = d.files().iter().position(|f| f == file).unwrap_or_else(|| panic!("no {file}"));
        d.get(i).unwrap().image
    }

    /// Largest difference between any two channels, per pixel, of an RGB CHW image.
    fn spread(img: &[u8]) -> Vec<u8> {
        let p = img.len() / 3;
        (0..p)
            .map(|i| {
                let c = [img[i], img[p + i], img[2 * p + i]];
                c.iter().max().unwrap() - c.iter().min().unwrap()
            })
            .collect()
    }

    #[test]
    fn the_two_domains_pair_up_emoji_by_emoji() {
        let Some((c, b)) = pair64() else { return };
        assert_eq!((c.len(), b.len()), (4495, 4495), "OpenMoji {VERSION} draws 4,495 emoji");
        assert_eq!(c.files(), b.files());
        assert!(c.files().windows(2).all(|w| w[0] < w[1]));
        assert_eq!((c.shape(), b.shape(), c.num_classes()), ([3, 64, 64], [3, 64, 64], None));
        assert!(c.skipped().is_empty() && b.skipped().is_empty());
        assert!(c.describe().starts_with("openmoji-color@64: 4495 images, 3x64x64"), "{}", c.describe());
        // The grinning face: yellow (saturated) in colour; its line art is grey, with ink.
        let face = item(c, "1F600.svg");
        assert!(spread(&face).iter().filter(|&&s| s > 100).count() > 500, "too little colour");
        let line = item(b, "1F600.svg");
        assert!(line.iter().filter(|&&v| v < 100).count() > 100, "too little ink");
        // Every black item is grey (antialiasing of black on white cannot tint).
        for i in 0..b.len() {
            let s = spread(&b.get(i).unwrap().image);
            assert!(s.iter().all(|&s| s <= 2), "{} is not grey", b.files()[i]);
        }
        // Background: the corners are white in both.
        assert_eq!((face[0], line[0], line[64 * 64 - 1]), (255, 255, 255));
    }

    #[test]
    fn names_take_a_size_suffix_and_channel_options() {
        let Some(dir) = package() else { return };
        let t = std::time::Instant::now();
        let small = crate::open("openmoji-black@32").unwrap();
        eprintln!("openmoji-black@32 opened in {:.2} s", t.elapsed().as_secs_f64());
        assert_eq!((small.len(), small.shape()), (4495, [3, 32, 32]));
        assert!(small.describe().contains("openmoji-black@32"));
        // The same emoji at 64 and 32 pixels agrees on average darkness.
        if let Some((_, b)) = pair64() {
            let i = b.files().iter().position(|f| f == "1F600.svg").unwrap();
            let mean = |v: &[u8]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
            let (m64, m32) = (mean(&b.get(i).unwrap().image), mean(&small.get(i).unwrap().image));
            assert!((m64 - m32).abs() < 12.0, "{m64} vs {m32}");
        }
        // Grey output through the CLI's options, and options that do not fit.
        let opts = crate::OpenOptions { size: Some([16, 16]), channels: Some(1), ..Default::default() };
        let g = crate::open_with("openmoji-black", &opts).unwrap();
        assert_eq!((g.len(), g.shape()), (4495, [1, 16, 16]));
        let opts = crate::OpenOptions { size: Some([16, 20]), ..Default::default() };
        let e = crate::open_with("openmoji-color", &opts).unwrap_err().to_string();
        assert!(e.contains("square"), "{e}");
        let opts = crate::OpenOptions { size: Some([16, 16]), ..Default::default() };
        assert!(crate::open_with("openmoji-color@32", &opts).unwrap_err().to_string().contains("@32"));
        let e =
            OpenMoji::open_in(&dir, Style::Black, &OpenMojiOptions { channels: 2, ..Default::default() }).unwrap_err();
        assert!(e.to_string().contains("2 channels"), "{e}");
    }

    #[test]
    fn bad_size_suffixes_are_clear_errors() {
        for bad in
            ["openmoji-color@", "openmoji-color@big", "openmoji-black@0", "openmoji-black@-3", "openmoji-color@9999"]
        {
            let e = crate::open(bad).unwrap_err().to_string();
            assert!(e.contains("size suffix") && e.contains(bad) && e.contains("@32"), "{bad}: {e}");
        }
        assert!(parse_spec("openmoji-colour").is_none());
        assert!(matches!(parse_spec("openmoji-black@48"), Some(Ok((Style::Black, Some(48))))));
        assert!(matches!(parse_spec("openmoji-color"), Some(Ok((Style::Color, None)))));
    }

    #[test]
    fn corrupt_svgs_name_themselves_or_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let good = r##"<svg viewBox="0 0 72 72" xmlns="http://www.w3.org/2000/svg"><circle cx="36" cy="36" r="20" fill="#FCEA2B" stroke="#000" stroke-width="2"/></svg>"##;
        for style in ["color", "black"] {
            std::fs::create_dir_all(root.join(style).join("svg")).unwrap();
            for n in ["a.svg", "b.svg", "c.svg"] {
                std::fs::write(root.join(style).join("svg").join(n), good).unwrap();
            }
        }
        std::fs::write(root.join("color/svg/b.svg"), "<svg viewBox=\"0 0 72 72\"><circle").unwrap();
        std::fs::write(root.join("color/svg/notes.txt"), "not an svg").unwrap();
        let e = OpenMoji::open_in(root, Style::Color, &OpenMojiOptions::default()).unwrap_err().to_string();
        assert!(e.contains("b.svg") && e.contains("not a renderable SVG"), "{e}");
        let skip = OpenMojiOptions { skip_bad: true, ..Default::default() };
        let c = OpenMoji::open_in(root, Style::Color, &skip).unwrap();
        assert_eq!(c.files(), ["a.svg", "c.svg"]);
        assert_eq!(c.skipped().len(), 1);
        assert!(c.skipped()[0].0.ends_with("color/svg/b.svg") && c.skipped()[0].1.contains("b.svg"));
        assert!(c.describe().contains("1 unreadable SVGs skipped"));
        let grey = OpenMoji::open_in(root, Style::Black, &OpenMojiOptions { size: 16, channels: 1, skip_bad: false });
        let grey = grey.unwrap();
        assert_eq!((grey.len(), grey.shape()), (3, [1, 16, 16]));
        assert!(grey.get(0).unwrap().image[8 * 16 + 8] < 255, "the centre is filled");
        // Pairs drop an emoji unreadable in either domain from both, keeping them aligned.
        let e = OpenMoji::pair_in(root, &OpenMojiOptions::default()).unwrap_err().to_string();
        assert!(e.contains("b.svg"), "{e}");
        let (c, b) = OpenMoji::pair_in(root, &skip).unwrap();
        assert_eq!(
            (c.files(), b.files()),
            (&["a.svg".to_string(), "c.svg".into()][..], &["a.svg".to_string(), "c.svg".into()][..])
        );
        assert_eq!(b.skipped().len(), 1);
        assert_eq!(c.get(1).unwrap(), b.get(1).unwrap());
        // Mismatched folders and empty ones.
        std::fs::remove_file(root.join("black/svg/c.svg")).unwrap();
        let e = OpenMoji::pair_in(root, &skip).unwrap_err().to_string();
        assert!(e.contains("1 only in color"), "{e}");
        let empty = tmp.path().join("empty");
        std::fs::create_dir_all(empty.join("color/svg")).unwrap();
        let e = OpenMoji::open_in(&empty, Style::Color, &skip).unwrap_err().to_string();
        assert!(e.contains("no .svg files"), "{e}");
        let e = OpenMoji::open_in(&empty, Style::Black, &skip).unwrap_err().to_string();
        assert!(e.contains("black/svg"), "{e}");
    }

    #[test]
    fn rendering_composites_over_white_and_fits_the_square() {
        let p = Path::new("t.svg");
        // A half-transparent red square covering the left half of a wide (2:1) canvas.
        let svg = br##"<svg viewBox="0 0 20 10" xmlns="http://www.w3.org/2000/svg"><rect width="10" height="10" fill="#FF0000" fill-opacity="0.5"/></svg>"##;
        let px = render_svg(svg, p, 8, 3).unwrap();
        let at = |c: usize, y: usize, x: usize| px[c * 64 + y * 8 + x];
        // Fitted to 8x4, centred vertically: rows 0-1 and 6-7 are white background.
        assert_eq!([at(0, 0, 1), at(1, 0, 1), at(2, 0, 1)], [255, 255, 255]);
        assert_eq!(at(0, 4, 1), 255);
        assert!((127..=128).contains(&at(1, 4, 1)) && at(1, 4, 1) == at(2, 4, 1));
        assert_eq!([at(0, 4, 6), at(1, 4, 6), at(2, 4, 6)], [255, 255, 255]);
        let grey = render_svg(svg, p, 8, 1).unwrap();
        assert_eq!(grey.len(), 64);
        assert!((145..=155).contains(&grey[4 * 8 + 1]), "{}", grey[4 * 8 + 1]);
        assert!(render_svg(svg, p, 2, 3).unwrap_err().to_string().contains("outside"));
    }

    #[test]
    fn a_missing_package_says_how_to_install_it() {
        let e = not_installed(Some(Path::new("/nowhere"))).to_string();
        assert!(e.contains("cargo xtask setup") && e.contains("npm install") && e.contains("/nowhere"), "{e}");
        assert!(e.contains(&format!("openmoji@{VERSION}")) && e.contains(DIR_VAR), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn random_bytes_never_panic_the_rasteriser(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = render_svg(&bytes, Path::new("r.svg"), 8, 3);
        }

        #[test]
        fn random_svg_bodies_never_panic_the_rasteriser(body in "[<>/=\" a-z0-9.#-]{0,200}") {
            let doc = format!("<svg viewBox=\"0 0 72 72\" xmlns=\"http://www.w3.org/2000/svg\">{body}</svg>");
            if let Ok(px) = render_svg(doc.as_bytes(), Path::new("r.svg"), 8, 1) {
                proptest::prop_assert_eq!(px.len(), 64);
            }
        }
    }
}
