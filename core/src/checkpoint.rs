//! Checkpoints: safetensors weights with PyTorch-style names, `config.json`, and the
//! training state, written atomically.
//!
//! Layout of a run's checkpoints:
//! ```text
//! RUN_DIR/checkpoints/step-00001000/   model.safetensors, ema.safetensors, optim.safetensors,
//!                                      config.json, state.json (written last: marks completeness)
//! RUN_DIR/checkpoints/LATEST           name of the newest complete checkpoint
//! ```
//! A checkpoint is first written into a hidden temporary folder (each file fsync'd),
//! then renamed into place, then `LATEST` is replaced by rename. A crash or kill at
//! any point leaves the previous checkpoint complete and `LATEST` pointing at a
//! complete checkpoint.
use crate::error::{CoreError, Result};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{nn::VarStore, Tensor};

pub const STATE_FILE: &str = "state.json";
pub const CONFIG_FILE: &str = "config.json";
pub const LATEST_FILE: &str = "LATEST";

/// Every way a set of named tensors can disagree with what a model expects.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct KeyReport {
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    /// (name, expected shape, found shape)
    pub mismatched: Vec<(String, Vec<i64>, Vec<i64>)>,
}

impl KeyReport {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
}

impl fmt::Display for KeyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.missing.is_empty() {
            writeln!(f, "  missing ({}): {}", self.missing.len(), self.missing.join(", "))?;
        }
        if !self.unexpected.is_empty() {
            writeln!(f, "  unexpected ({}): {}", self.unexpected.len(), self.unexpected.join(", "))?;
        }
        if !self.mismatched.is_empty() {
            writeln!(f, "  wrong shape ({}):", self.mismatched.len())?;
            for (n, want, got) in &self.mismatched {
                writeln!(f, "    {n}: model expects {want:?}, file has {got:?}")?;
            }
        }
        Ok(())
    }
}

/// Compare named tensors against the variables a model expects.
pub fn compare_keys(expected: &HashMap<String, Tensor>, found: &[(String, Tensor)]) -> KeyReport {
    let found_map: HashMap<&str, &Tensor> = found.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut r = KeyReport::default();
    for (name, t) in expected {
        match found_map.get(name.as_str()) {
            None => r.missing.push(name.clone()),
            Some(f) if f.size() != t.size() => r.mismatched.push((name.clone(), t.size(), f.size())),
            Some(_) => {}
        }
    }
    let exp: HashSet<&str> = expected.keys().map(|s| s.as_str()).collect();
    r.unexpected = found.iter().filter(|(n, _)| !exp.contains(n.as_str())).map(|(n, _)| n.clone()).collect();
    r.missing.sort();
    r.unexpected.sort();
    r.mismatched.sort();
    r
}

/// Read a safetensors file; a missing, truncated or corrupt file is an error naming it.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if !path.exists() {
        return Err(CoreError::file(path, "file not found"));
    }
    Tensor::read_safetensors(path).map_err(|e| CoreError::file(path, format!("not a readable safetensors file: {e}")))
}

/// Load a safetensors file into every variable of `vs`. Every missing, unexpected and
/// mis-shaped key is reported at once, with the file name; nothing is copied unless all match.
pub fn load_var_store(vs: &VarStore, path: &Path) -> Result<()> {
    let found = read_safetensors(path)?;
    load_named_into(&vs.variables(), &found, path)
}

/// Copy `found` into `expected` (same names, same shapes) or report every difference.
pub fn load_named_into(expected: &HashMap<String, Tensor>, found: &[(String, Tensor)], path: &Path) -> Result<()> {
    copy_named_into(expected, found)
        .map_err(|report| CoreError::KeyMismatch { path: path.to_path_buf(), report: report.to_string() })
}

/// [`load_named_into`] without a file to name: the [`KeyReport`] itself on a mismatch, for callers that
/// gather several components' reports into one error. Nothing is copied unless all match; `copy_`
/// converts each tensor to its variable's kind and device.
pub fn copy_named_into(
    expected: &HashMap<String, Tensor>,
    found: &[(String, Tensor)],
) -> std::result::Result<(), KeyReport> {
    let report = compare_keys(expected, found);
    if !report.is_empty() {
        return Err(report);
    }
    tch::no_grad(|| {
        for (name, src) in found {
            if let Some(dst) = expected.get(name) {
                dst.shallow_clone().copy_(src);
            }
        }
    });
    Ok(())
}

/// Write named tensors as safetensors to `path`, atomically.
pub fn write_safetensors_atomic(named: &[(String, Tensor)], path: &Path) -> Result<()> {
    let tmp = tmp_sibling(path);
    let contiguous: Vec<(String, Tensor)> =
        named.iter().map(|(n, t)| (n.clone(), t.detach().to_device(tch::Device::Cpu).contiguous())).collect();
    Tensor::write_safetensors(&contiguous, &tmp).map_err(|e| CoreError::file(&tmp, e.to_string()))?;
    fsync_file(&tmp)?;
    fs::rename(&tmp, path).map_err(|e| CoreError::io(path, e))?;
    fsync_dir(path.parent().unwrap_or(Path::new(".")));
    Ok(())
}

/// Write bytes to `path` atomically (temp file, fsync, rename, fsync of the folder).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_sibling(path);
    {
        let mut f = fs::File::create(&tmp).map_err(|e| CoreError::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| CoreError::io(&tmp, e))?;
        f.sync_all().map_err(|e| CoreError::io(&tmp, e))?;
    }
    fs::rename(&tmp, path).map_err(|e| CoreError::io(path, e))?;
    fsync_dir(path.parent().unwrap_or(Path::new(".")));
    Ok(())
}

fn tmp_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

fn fsync_file(path: &Path) -> Result<()> {
    fs::File::open(path).and_then(|f| f.sync_all()).map_err(|e| CoreError::io(path, e))
}

fn fsync_dir(dir: &Path) {
    // Directory fsync makes the rename durable; not every platform allows it.
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// What to write in one checkpoint.
#[derive(Default)]
pub struct CheckpointData {
    /// Named tensor groups, each written as `<group>.safetensors` (e.g. `model`, `ema`, `optim`).
    pub groups: BTreeMap<String, Vec<(String, Tensor)>>,
    /// The model/run configuration (`config.json`).
    pub config: serde_json::Value,
    /// Training state (`state.json`): step, seed, scaler, anything small.
    pub state: serde_json::Value,
}

/// Name of the checkpoint folder for a step.
pub fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Test hook: called after each file of a checkpoint is written, with its path. An error
/// aborts the save, which must leave the previous checkpoint intact.
pub type WriteHook<'a> = &'a mut dyn FnMut(&Path) -> Result<()>;

/// Save a checkpoint under `root` (the run's `checkpoints/` folder) for `step`, then keep
/// only the newest `keep` checkpoints (at least one). Returns the checkpoint folder.
pub fn save_checkpoint(root: &Path, step: u64, data: &CheckpointData, keep: usize) -> Result<PathBuf> {
    save_checkpoint_with_hook(root, step, data, keep, &mut |_| Ok(()))
}

pub fn save_checkpoint_with_hook(
    root: &Path,
    step: u64,
    data: &CheckpointData,
    keep: usize,
    hook: WriteHook<'_>,
) -> Result<PathBuf> {
    fs::create_dir_all(root).map_err(|e| CoreError::io(root, e))?;
    let name = step_dir_name(step);
    let tmp = root.join(format!(".tmp-{name}-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| CoreError::io(&tmp, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| CoreError::io(&tmp, e))?;
    let result = (|| -> Result<()> {
        for (group, tensors) in &data.groups {
            let p = tmp.join(format!("{group}.safetensors"));
            write_safetensors_atomic(tensors, &p)?;
            hook(&p)?;
        }
        let cfg = tmp.join(CONFIG_FILE);
        write_atomic(&cfg, &json_bytes(&data.config)?)?;
        hook(&cfg)?;
        // state.json last: its presence marks the checkpoint complete.
        let st = tmp.join(STATE_FILE);
        write_atomic(&st, &json_bytes(&data.state)?)?;
        hook(&st)?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let dst = root.join(&name);
    if dst.exists() {
        // Re-saving the same step: move the old one aside first (rename cannot replace a folder).
        let old = root.join(format!(".old-{name}-{}", std::process::id()));
        fs::rename(&dst, &old).map_err(|e| CoreError::io(&dst, e))?;
        fs::rename(&tmp, &dst).map_err(|e| CoreError::io(&dst, e))?;
        let _ = fs::remove_dir_all(&old);
    } else {
        fs::rename(&tmp, &dst).map_err(|e| CoreError::io(&dst, e))?;
    }
    fsync_dir(root);
    write_atomic(&root.join(LATEST_FILE), name.as_bytes())?;
    prune(root, keep.max(1), &name);
    Ok(dst)
}

fn json_bytes(v: &serde_json::Value) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(|e| CoreError::Other(format!("serialising JSON: {e}")))
}

/// Complete checkpoints under `root`, oldest first, as (step, folder).
pub fn list_checkpoints(root: &Path) -> Vec<(u64, PathBuf)> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(root) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(s) = name.strip_prefix("step-") {
                if let Ok(step) = s.parse::<u64>() {
                    if e.path().join(STATE_FILE).is_file() {
                        out.push((step, e.path()));
                    }
                }
            }
        }
    }
    out.sort();
    out
}

fn prune(root: &Path, keep: usize, current: &str) {
    let all = list_checkpoints(root);
    if all.len() > keep {
        for (_, p) in &all[..all.len() - keep] {
            if p.file_name().map(|n| n != current).unwrap_or(false) {
                let _ = fs::remove_dir_all(p);
            }
        }
    }
    // Leftovers of interrupted saves.
    if let Ok(rd) = fs::read_dir(root) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if (n.starts_with(".tmp-") || n.starts_with(".old-")) && !n.ends_with(&format!("-{}", std::process::id())) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// The newest complete checkpoint under `root`: the one `LATEST` names if it is complete,
/// else the highest complete `step-*` folder.
pub fn latest_checkpoint(root: &Path) -> Option<PathBuf> {
    if let Ok(name) = fs::read_to_string(root.join(LATEST_FILE)) {
        let p = root.join(name.trim());
        if p.join(STATE_FILE).is_file() {
            return Some(p);
        }
    }
    list_checkpoints(root).pop().map(|(_, p)| p)
}

/// A checkpoint folder, opened for reading.
#[derive(Debug, Clone)]
pub struct CheckpointReader {
    pub dir: PathBuf,
    pub config: serde_json::Value,
    pub state: serde_json::Value,
}

impl CheckpointReader {
    pub fn open(dir: &Path) -> Result<Self> {
        let read_json = |name: &str| -> Result<serde_json::Value> {
            let p = dir.join(name);
            let bytes = fs::read(&p).map_err(|e| CoreError::io(&p, e))?;
            serde_json::from_slice(&bytes).map_err(|e| CoreError::file(&p, format!("invalid JSON: {e}")))
        };
        Ok(CheckpointReader { dir: dir.to_path_buf(), state: read_json(STATE_FILE)?, config: read_json(CONFIG_FILE)? })
    }

    pub fn has_group(&self, group: &str) -> bool {
        self.group_path(group).is_file()
    }

    pub fn group_path(&self, group: &str) -> PathBuf {
        self.dir.join(format!("{group}.safetensors"))
    }

    pub fn read_group(&self, group: &str) -> Result<Vec<(String, Tensor)>> {
        read_safetensors(&self.group_path(group))
    }

    pub fn load_group_into(&self, group: &str, vs: &VarStore) -> Result<()> {
        load_var_store(vs, &self.group_path(group))
    }

    pub fn step(&self) -> u64 {
        self.state.get("step").and_then(|v| v.as_u64()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Device};

    fn model(vs: &nn::Path<'_>, hidden: i64) -> (nn::Linear, nn::Linear) {
        (nn::linear(vs / "fc1", 4, hidden, Default::default()), nn::linear(vs / "fc2", hidden, 2, Default::default()))
    }

    fn data_of(vs: &VarStore, step: u64) -> CheckpointData {
        let named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        let mut groups = BTreeMap::new();
        groups.insert("model".to_string(), named);
        CheckpointData { groups, config: serde_json::json!({"hidden": 8}), state: serde_json::json!({"step": step}) }
    }

    #[test]
    fn round_trip_and_latest() {
        let dir = tempfile::tempdir().unwrap();
        let vs = VarStore::new(Device::Cpu);
        let _m = model(&vs.root(), 8);
        let p = save_checkpoint(dir.path(), 10, &data_of(&vs, 10), 2).unwrap();
        assert_eq!(latest_checkpoint(dir.path()).unwrap(), p);
        let vs2 = VarStore::new(Device::Cpu);
        let _m2 = model(&vs2.root(), 8);
        let r = CheckpointReader::open(&p).unwrap();
        assert_eq!(r.step(), 10);
        r.load_group_into("model", &vs2).unwrap();
        for (n, t) in vs.variables() {
            assert!(t.equal(&vs2.variables()[&n]), "{n} differs after round trip");
        }
        // Pruning keeps the newest two.
        save_checkpoint(dir.path(), 20, &data_of(&vs, 20), 2).unwrap();
        save_checkpoint(dir.path(), 30, &data_of(&vs, 30), 2).unwrap();
        let steps: Vec<u64> = list_checkpoints(dir.path()).into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, vec![20, 30]);
    }

    #[test]
    fn key_mismatch_reports_everything_with_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let vs = VarStore::new(Device::Cpu);
        let _m = model(&vs.root(), 8);
        let _extra = vs.root().zeros("extra", &[3]);
        let path = dir.path().join("w.safetensors");
        write_safetensors_atomic(&vs.variables().into_iter().collect::<Vec<_>>(), &path).unwrap();
        let other = VarStore::new(Device::Cpu);
        let _m = model(&other.root(), 16); // different hidden size
        let _more = other.root().zeros("bonus", &[1]);
        let before = other.variables()["fc1.weight"].copy();
        let err = load_var_store(&other, &path).unwrap_err().to_string();
        assert!(err.contains("w.safetensors"), "{err}");
        assert!(err.contains("missing (1): bonus"), "{err}");
        assert!(err.contains("unexpected (1): extra"), "{err}");
        assert!(err.contains("wrong shape (3)"), "{err}");
        assert!(err.contains("fc1.weight: model expects [16, 4], file has [8, 4]"), "{err}");
        // Nothing was copied.
        assert!(other.variables()["fc1.weight"].equal(&before));
    }

    #[test]
    fn missing_and_corrupt_files_name_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let vs = VarStore::new(Device::Cpu);
        let p = dir.path().join("nope.safetensors");
        assert!(load_var_store(&vs, &p).unwrap_err().to_string().contains("nope.safetensors: file not found"));
        let bad = dir.path().join("bad.safetensors");
        fs::write(&bad, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json").unwrap();
        let e = load_var_store(&vs, &bad).unwrap_err().to_string();
        assert!(e.contains("bad.safetensors") && e.contains("not a readable safetensors"), "{e}");
    }

    #[test]
    fn interrupted_save_leaves_previous_checkpoint_loadable() {
        let dir = tempfile::tempdir().unwrap();
        let vs = VarStore::new(Device::Cpu);
        let _m = model(&vs.root(), 8);
        let good = save_checkpoint(dir.path(), 1, &data_of(&vs, 1), 3).unwrap();
        let saved = vs.variables()["fc1.weight"].copy();
        tch::no_grad(|| {
            let _ = vs.variables()["fc1.weight"].shallow_clone().fill_(7.0);
        });
        // Abort after each possible file in turn: the old checkpoint must survive every time.
        for fail_at in 0..3 {
            let mut n = 0;
            let mut hook = |_: &Path| -> Result<()> {
                n += 1;
                if n > fail_at {
                    Err(CoreError::Other("killed".into()))
                } else {
                    Ok(())
                }
            };
            assert!(save_checkpoint_with_hook(dir.path(), 2, &data_of(&vs, 2), 3, &mut hook).is_err());
            assert_eq!(latest_checkpoint(dir.path()).unwrap(), good);
            let r = CheckpointReader::open(&good).unwrap();
            let t = r.read_group("model").unwrap();
            let w = &t.iter().find(|(n, _)| n == "fc1.weight").unwrap().1;
            assert!(w.equal(&saved));
        }
        // A half-written checkpoint folder without state.json (a kill before the final
        // rename) and a torn LATEST are both ignored.
        let torn = dir.path().join(step_dir_name(5));
        fs::create_dir_all(&torn).unwrap();
        fs::write(torn.join("model.safetensors"), b"garbage").unwrap();
        fs::write(dir.path().join(LATEST_FILE), step_dir_name(5)).unwrap();
        assert_eq!(latest_checkpoint(dir.path()).unwrap(), good);
    }
}
