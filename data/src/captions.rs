//! Captions for text-to-image fine-tuning: an image folder in Hugging Face's `imagefolder` layout (a
//! `metadata.jsonl` whose lines name a `file_name` and its `text`), side-car `.txt` files beside the images,
//! or one caption for every image (DreamBooth), where `{class}` stands for each image's class name.
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::dataset::{Dataset, Item};
use crate::error::{DataError, Result};
use crate::folder::FolderDataset;

/// The captions of the images of `folder` (in `folder.files()` order): from `metadata.jsonl` in `root`,
/// else from a `.txt` file beside each image. An image with neither is an error naming it.
pub fn folder_captions(root: &Path, folder: &FolderDataset) -> Result<Vec<String>> {
    let meta = root.join("metadata.jsonl");
    if meta.is_file() {
        let text = std::fs::read_to_string(&meta).map_err(|e| DataError::io(&meta, e))?;
        let mut by_file = HashMap::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| DataError::format(&meta, format!("line {}: not JSON: {e}", i + 1)))?;
            let (Some(file), Some(caption)) = (v["file_name"].as_str(), v["text"].as_str()) else {
                return Err(DataError::format(
                    &meta,
                    format!("line {}: expected \"file_name\" and \"text\" strings", i + 1),
                ));
            };
            by_file.insert(root.join(file), caption.to_string());
        }
        return folder
            .files()
            .iter()
            .map(|f| {
                by_file.get(f).cloned().ok_or_else(|| {
                    DataError::format(f, format!("no caption: {} has no line with this file_name", meta.display()))
                })
            })
            .collect();
    }
    folder
        .files()
        .iter()
        .map(|f| {
            let txt = f.with_extension("txt");
            std::fs::read_to_string(&txt).map(|t| t.trim().to_string()).map_err(|_| {
                DataError::format(
                    f,
                    format!(
                        "no caption: neither {} nor {} exists (or give one --caption)",
                        txt.display(),
                        meta.display()
                    ),
                )
            })
        })
        .collect()
}

/// `template` for every item of `ds`, `{class}` replaced by the item's class name (its label's number where the
/// dataset names no classes: "a digit {class}" gives "a digit 7").
pub fn template_captions(ds: &dyn Dataset, template: &str) -> Result<Vec<String>> {
    if !template.contains("{class}") {
        return Ok(vec![template.to_string(); ds.len()]);
    }
    let names = ds.class_names();
    (0..ds.len())
        .map(|i| {
            let label = ds.get(i)?.label.ok_or_else(|| {
                DataError::Invalid(format!("caption `{template}` uses {{class}}, but {} has no labels", ds.describe()))
            })?;
            let name = match &names {
                Some(n) => n.get(label as usize).cloned().unwrap_or_else(|| label.to_string()),
                None => label.to_string(),
            };
            Ok(template.replace("{class}", &name))
        })
        .collect()
}

/// A dataset whose items are labelled with their own index, so that a batch's labels find its captions.
#[derive(Debug)]
pub struct Indexed(pub Arc<dyn Dataset>);

impl Dataset for Indexed {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn shape(&self) -> [usize; 3] {
        self.0.shape()
    }
    fn num_classes(&self) -> Option<usize> {
        Some(self.0.len())
    }
    fn get(&self, index: usize) -> Result<Item> {
        Ok(Item { image: self.0.get(index)?.image, label: Some(index as i64) })
    }
    fn describe(&self) -> String {
        self.0.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OpenOptions;

    fn folder(dir: &Path, names: &[&str]) -> FolderDataset {
        for n in names {
            image::RgbImage::new(4, 4).save(dir.join(n)).unwrap();
        }
        FolderDataset::open(dir, &OpenOptions::default()).unwrap()
    }

    #[test]
    fn metadata_lines_and_side_car_files_give_captions_or_name_the_image_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let ds = folder(dir.path(), &["a.png", "b.png"]);
        std::fs::write(dir.path().join("a.txt"), "a red square\n").unwrap();
        let e = folder_captions(dir.path(), &ds).unwrap_err().to_string();
        assert!(e.contains("b.png") && e.contains("b.txt"), "{e}");
        std::fs::write(dir.path().join("b.txt"), "a blue square").unwrap();
        assert_eq!(folder_captions(dir.path(), &ds).unwrap(), ["a red square", "a blue square"]);
        std::fs::write(dir.path().join("metadata.jsonl"), "{\"file_name\": \"b.png\", \"text\": \"B\"}\n").unwrap();
        let e = folder_captions(dir.path(), &ds).unwrap_err().to_string();
        assert!(e.contains("a.png") && e.contains("metadata.jsonl"), "{e}");
        std::fs::write(
            dir.path().join("metadata.jsonl"),
            "{\"file_name\": \"b.png\", \"text\": \"B\"}\n{\"file_name\": \"a.png\", \"text\": \"A\"}\n",
        )
        .unwrap();
        assert_eq!(folder_captions(dir.path(), &ds).unwrap(), ["A", "B"]);
        let idx = Indexed(Arc::new(ds));
        assert_eq!(idx.get(1).unwrap().label, Some(1));
    }

    #[test]
    fn templates_name_each_class() {
        let digits = crate::open("digits").unwrap();
        let caps = template_captions(digits.as_ref(), "a digit {class}").unwrap();
        assert_eq!(caps.len(), digits.len());
        assert_eq!(caps[0], format!("a digit {}", digits.get(0).unwrap().label.unwrap()));
        assert_eq!(template_captions(digits.as_ref(), "sks").unwrap()[3], "sks");
    }
}
