//! Textual-inversion embeddings (Gal et al., "An Image is Worth One Word: Personalizing Text-to-Image
//! Generation using Textual Inversion", arXiv 2208.01618): new tokens whose embeddings were learned for a
//! concept, in the layouts diffusers 0.42.1's `load_textual_inversion` reads (`loaders/textual_inversion.py`)
//! and A1111 writes:
//!
//! - diffusers' `learned_embeds.safetensors`: one tensor, [dim] or [n, dim], under its token's name;
//! - A1111's: `emb_params` [n, dim] (or `string_to_param.*`), the token being the file's name;
//! - SDXL's: `clip_l` and `clip_g`, one table per text encoder.
//!
//! Only `.safetensors` files are read: A1111's `.pt` and diffusers' `.bin` are pickles, which can run code when
//! opened.
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tch::Tensor;

use crate::error::{DiffusionError, Result};

/// An embedding file and the token to use it under, as `--embedding FILE[:TOKEN]` gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingSpec {
    pub path: PathBuf,
    /// `None`: the file's own token (diffusers' layout) or the file's name.
    pub token: Option<String>,
}

impl FromStr for EmbeddingSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.is_empty() {
            return Err("expected FILE or FILE:TOKEN".into());
        }
        // A token has no path separators, and the file before it has an extension.
        if let Some((path, token)) = s.rsplit_once(':') {
            if !token.is_empty() && !token.contains(['/', '\\']) && Path::new(path).extension().is_some() {
                return Ok(EmbeddingSpec { path: path.into(), token: Some(token.into()) });
            }
        }
        Ok(EmbeddingSpec { path: s.into(), token: None })
    }
}

/// An embedding file read: its token and vectors.
#[derive(Debug)]
pub struct EmbeddingFile {
    pub path: PathBuf,
    pub token: String,
    /// The first (or only) text encoder's vectors, [n, dim], and the key they came from.
    pub vectors: (String, Tensor),
    /// SDXL's second text encoder's vectors (`clip_g`), [n, dim].
    pub vectors_2: Option<(String, Tensor)>,
}

/// What loading an embedding did.
#[derive(Debug, Clone)]
pub struct EmbeddingReport {
    pub path: PathBuf,
    pub token: String,
    pub vectors: usize,
}

impl fmt::Display for EmbeddingReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.vectors == 1 { "" } else { "s" };
        write!(f, "embedding {} ({} vector{s})", self.token, self.vectors)
    }
}

fn emb_err(path: &Path, message: impl Into<String>) -> DiffusionError {
    DiffusionError::Embedding { path: path.to_path_buf(), message: message.into() }
}

/// A vector or a table of vectors as [n, dim].
fn rows(path: &Path, key: &str, t: Tensor) -> Result<(String, Tensor)> {
    match t.dim() {
        1 => Ok((key.to_string(), t.unsqueeze(0))),
        2 if t.size()[0] >= 1 => Ok((key.to_string(), t)),
        _ => Err(emb_err(path, format!("{key}: expected [dim] or [n, dim] vectors, got shape {:?}", t.size()))),
    }
}

impl EmbeddingFile {
    /// Read `path`; `token` overrides the file's own.
    pub fn read(path: &Path, token: Option<&str>) -> Result<Self> {
        if !path.is_file() {
            return Err(emb_err(path, "file not found"));
        }
        if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            return Err(emb_err(
                path,
                "only .safetensors embeddings are read (A1111's .pt and diffusers' .bin are pickles, which can run \
                 code when opened: convert the file to safetensors first)",
            ));
        }
        let mut named = genlab_core::checkpoint::read_safetensors(path)?;
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let keys: Vec<&str> = named.iter().map(|(k, _)| k.as_str()).collect();
        let (own, vectors, vectors_2) = match keys.as_slice() {
            ["clip_g", "clip_l"] => {
                let mut it = named.into_iter();
                let g = it.next().map(|(k, t)| rows(path, &k, t)).transpose()?;
                let l = it.next().map(|(k, t)| rows(path, &k, t)).transpose()?;
                (stem, l, g)
            }
            ["emb_params"] | ["string_to_param.*"] => {
                let (k, t) = named.into_iter().next().expect("one key");
                (stem, Some(rows(path, &k, t)?), None)
            }
            [_] => {
                let (k, t) = named.into_iter().next().expect("one key");
                (k.clone(), Some(rows(path, &k, t)?), None)
            }
            _ => {
                return Err(emb_err(
                    path,
                    format!(
                        "not an embedding file: expected one tensor (named by its token, or emb_params) or SDXL's \
                         clip_l and clip_g, found keys {keys:?}"
                    ),
                ))
            }
        };
        let vectors = vectors.expect("every layout has the first encoder's vectors");
        if let Some(g) = &vectors_2 {
            if g.1.size()[0] != vectors.1.size()[0] {
                return Err(emb_err(
                    path,
                    format!("clip_l has {} vectors but clip_g {}: they must agree", vectors.1.size()[0], g.1.size()[0]),
                ));
            }
        }
        let token = token.map(str::to_string).unwrap_or(own);
        Ok(EmbeddingFile { path: path.to_path_buf(), token, vectors, vectors_2 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_take_a_token_after_a_file_with_an_extension() {
        let s: EmbeddingSpec = "emb/style.safetensors:<style>".parse().unwrap();
        assert_eq!(s, EmbeddingSpec { path: "emb/style.safetensors".into(), token: Some("<style>".into()) });
        let s: EmbeddingSpec = "emb/style.safetensors".parse().unwrap();
        assert_eq!(s.token, None);
        let s: EmbeddingSpec = "C:/emb/style.safetensors".parse().unwrap();
        assert_eq!((s.path, s.token), (PathBuf::from("C:/emb/style.safetensors"), None));
        assert!("".parse::<EmbeddingSpec>().is_err());
    }
}
