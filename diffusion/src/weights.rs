//! Reading a diffusers component's weights from its folder: one safetensors file, its sharded form,
//! or the fp16 variant of either. Both the CLIP text encoders and the Stable Diffusion U-Net read
//! through it.
use crate::error::{model_err, Result};
use genlab_core::checkpoint::read_safetensors;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Read a component's weights from `dir`, in this order of preference: `<stem>.safetensors`, its sharded
/// form `<stem>.safetensors.index.json` (whose `weight_map` names the shards), then the same two for the
/// `<stem>.fp16` variant. Returns the tensors and the file they came from (for messages).
pub fn read_weights(dir: &Path, stem: &str) -> Result<(Vec<(String, Tensor)>, PathBuf)> {
    for name in [format!("{stem}.safetensors"), format!("{stem}.fp16.safetensors")] {
        let single = dir.join(&name);
        if single.is_file() {
            return Ok((read_safetensors(&single)?, single));
        }
        let index = dir.join(format!("{name}.index.json"));
        if index.is_file() {
            return Ok((read_sharded(&index)?, index));
        }
    }
    Err(model_err(
        &dir.join(format!("{stem}.safetensors")),
        format!("file not found (nor a sharded {stem}.safetensors.index.json or an fp16 variant beside it)"),
    ))
}

/// Every shard a `*.safetensors.index.json` names in its `weight_map`, read and concatenated.
fn read_sharded(index: &Path) -> Result<Vec<(String, Tensor)>> {
    #[derive(Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(|e| model_err(index, format!("cannot read: {e}")))?;
    let idx: Index = serde_json::from_str(&text)
        .map_err(|e| model_err(index, format!("not a shard index with a weight_map: {e}")))?;
    let shards: BTreeSet<&String> = idx.weight_map.values().collect();
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut all = Vec::new();
    for s in shards {
        all.extend(read_safetensors(&dir.join(s))?);
    }
    Ok(all)
}
