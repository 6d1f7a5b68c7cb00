//! LoRA files for Stable-Diffusion-compatible models, in the three layouts people share them in, matched to
//! the layers of a loaded model by name:
//!
//! - kohya-ss / A1111 (`lora_unet_*`, `lora_te_*`, `lora_te1_*`, `lora_te2_*`, with `.lora_down.weight`,
//!   `.lora_up.weight` and `.alpha`): module names with `.` written as `_`, in diffusers' UNet names for SD
//!   1.x/2.x and in the original (SGM) names for SDXL (`input_blocks_4_1_...`);
//! - peft, as diffusers' `save_lora_weights` writes it (`unet.<module>.lora_A.weight`, `lora_B`, with the
//!   `LoraConfig` of each component in the `lora_adapter_metadata` entry of the file's metadata: `lora_alpha`,
//!   `alpha_pattern`, `use_rslora`);
//! - diffusers' own format before peft (`unet.<module>.lora.down.weight`, `...processor.to_q_lora.up.weight`,
//!   `text_encoder.<module>.lora_linear_layer.down.weight`, alphas as `<component>.<module>.alpha`).
//!
//! The key mapping follows diffusers 0.42.1 `loaders/lora_conversion_utils.py`
//! (`_convert_non_diffusers_lora_to_diffusers`, `_maybe_map_sgm_blocks_to_diffusers`) and
//! `utils/state_dict_utils.py`. Instead of rewriting kohya names token by token, each of the model's layer names
//! is written the kohya way and looked up, so every layer genlab has is found and nothing is guessed.
//!
//! The scale of a layer's adapter is `alpha / r` (`alpha / sqrt(r)` with peft's `use_rslora`), with `alpha`
//! from the layer's `.alpha` entry, else from the metadata, else `r` (diffusers' rule for files without
//! alphas).
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use genlab_core::lora::{Target, Targets};
use regex::Regex;
use tch::Tensor;

use crate::error::{DiffusionError, Result};

/// The network of a Stable Diffusion model an adapter layer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    Unet,
    TextEncoder,
    /// SDXL's second text encoder.
    TextEncoder2,
}

impl Component {
    /// diffusers' name of the component (the prefix of its keys in peft and diffusers files).
    pub fn name(self) -> &'static str {
        match self {
            Component::Unet => "unet",
            Component::TextEncoder => "text_encoder",
            Component::TextEncoder2 => "text_encoder_2",
        }
    }
}

/// The key layout of a LoRA file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraFormat {
    Kohya,
    Peft,
    Diffusers,
}

impl fmt::Display for LoraFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LoraFormat::Kohya => "kohya",
            LoraFormat::Peft => "peft",
            LoraFormat::Diffusers => "diffusers",
        })
    }
}

/// A LoRA file and the weight to apply it with: `FILE` (weight 1) or `FILE:WEIGHT`, as `--lora` takes them.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub path: PathBuf,
    pub weight: f64,
}

impl FromStr for LoraSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        // Only a suffix that reads as a number is a weight, so paths with colons stay whole.
        if let Some((path, w)) = s.rsplit_once(':') {
            if let Ok(weight) = w.parse::<f64>() {
                if !weight.is_finite() {
                    return Err(format!("LoRA weight must be a finite number, got `{w}` in `{s}`"));
                }
                return Ok(LoraSpec { path: path.into(), weight });
            }
        }
        if s.is_empty() {
            return Err("expected FILE or FILE:WEIGHT".into());
        }
        Ok(LoraSpec { path: s.into(), weight: 1.0 })
    }
}

/// The adaptable layers of a model, per component.
pub struct ModelTargets<'a> {
    pub unet: &'a Targets,
    pub text_encoder: &'a Targets,
    pub text_encoder_2: Option<&'a Targets>,
    /// The original (SGM) name of a UNet layer for kohya's SDXL files, given its diffusers name.
    pub unet_original_name: Option<&'a dyn Fn(&str) -> String>,
}

impl ModelTargets<'_> {
    fn of(&self, c: Component) -> Option<&Targets> {
        match c {
            Component::Unet => Some(self.unet),
            Component::TextEncoder => Some(self.text_encoder),
            Component::TextEncoder2 => self.text_encoder_2,
        }
    }

    /// Kohya's name of each layer (`.` as `_`) to the layer's name; names two layers would share are left out.
    fn kohya_names(&self, c: Component) -> HashMap<String, String> {
        let mut out: HashMap<String, Option<String>> = HashMap::new();
        let mut add = |kohya: String, name: &str| {
            out.entry(kohya)
                .and_modify(|v| {
                    if v.as_deref() != Some(name) {
                        *v = None
                    }
                })
                .or_insert_with(|| Some(name.to_string()));
        };
        if let Some(targets) = self.of(c) {
            for (name, _) in targets.iter() {
                add(name.replace('.', "_"), name);
                if c == Component::Unet {
                    if let Some(original) = self.unet_original_name {
                        add(original(name).replace('.', "_"), name);
                    }
                }
            }
        }
        out.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Down,
    Up,
    Alpha,
}

#[derive(Debug, Default)]
struct Layer {
    down: Option<(String, Tensor)>,
    up: Option<(String, Tensor)>,
    alpha: Option<(String, f64)>,
}

/// One component's peft `LoraConfig`, as far as the scale depends on it.
#[derive(Debug, Default)]
struct PeftScale {
    lora_alpha: Option<f64>,
    alpha_pattern: Vec<(Regex, f64)>,
    use_rslora: bool,
}

impl PeftScale {
    /// The alpha of module `name` (peft's `get_pattern_key`: a pattern matches the name or a dotted suffix).
    fn alpha(&self, names: &[&str]) -> Option<f64> {
        for (re, a) in &self.alpha_pattern {
            if names.iter().any(|n| re.is_match(n)) {
                return Some(*a);
            }
        }
        self.lora_alpha
    }
}

/// A LoRA file read and sorted by layer, before it meets a model.
#[derive(Debug)]
pub struct LoraFile {
    pub path: PathBuf,
    pub format: LoraFormat,
    /// (component, the layer's name: diffusers' / transformers' for peft and diffusers files, kohya's for
    /// kohya files) to its tensors.
    layers: BTreeMap<(Component, String), Layer>,
    /// Keys of no layout genlab reads.
    unrecognised: Vec<String>,
    scales: HashMap<Component, PeftScale>,
}

/// What attaching a LoRA file did.
#[derive(Debug, Clone)]
pub struct LoraReport {
    pub path: PathBuf,
    /// The adapter's name on the model's layers.
    pub adapter: String,
    pub format: LoraFormat,
    pub weight: f64,
    /// Layers adapted.
    pub layers: usize,
    /// Keys that matched no layer (left out with `allow_unmatched`).
    pub unmatched: Vec<String>,
}

impl fmt::Display for LoraReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
        write!(f, "LoRA {name} ({} format) x{} on {} layers", self.format, self.weight, self.layers)?;
        if !self.unmatched.is_empty() {
            write!(f, "; {} unmatched keys ignored: {}", self.unmatched.len(), list(&self.unmatched))?;
        }
        Ok(())
    }
}

/// The first few of `keys`, and how many more.
fn list(keys: &[String]) -> String {
    const SHOWN: usize = 12;
    let mut s = keys.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if keys.len() > SHOWN {
        s.push_str(&format!(", ... and {} more", keys.len() - SHOWN));
    }
    s
}

fn lora_err(path: &Path, message: impl Into<String>) -> DiffusionError {
    DiffusionError::Lora { path: path.to_path_buf(), message: message.into() }
}

/// kohya's key `lora_unet_<name>.<suffix>`: the component, the name and the role; `Err` names an adapter kind
/// genlab does not implement.
fn kohya_key(key: &str) -> Option<std::result::Result<(Component, &str, Role), &'static str>> {
    let (c, rest) = [
        ("lora_unet_", Component::Unet),
        ("lora_te1_", Component::TextEncoder),
        ("lora_te2_", Component::TextEncoder2),
        ("lora_te_", Component::TextEncoder),
    ]
    .iter()
    .find_map(|(p, c)| key.strip_prefix(p).map(|r| (*c, r)))?;
    let (name, suffix) = rest.split_once('.')?;
    Some(match suffix {
        "lora_down.weight" => Ok((c, name, Role::Down)),
        "lora_up.weight" => Ok((c, name, Role::Up)),
        "alpha" => Ok((c, name, Role::Alpha)),
        "dora_scale" => Err("DoRA (weight-decomposed LoRA)"),
        "lora_mid.weight" => Err("LoCon with a Tucker-decomposed middle weight (lora_mid)"),
        s if s.starts_with("hada_") => Err("LyCORIS LoHa"),
        s if s.starts_with("lokr_") => Err("LyCORIS LoKr"),
        _ => return None,
    })
}

/// A peft or diffusers key: the component, the module's name (normalised to genlab's layer names) and the role.
fn diffusers_key(key: &str) -> Option<std::result::Result<(Component, String, Role), &'static str>> {
    let (c, rest) = if let Some(r) = key.strip_prefix("text_encoder_2.") {
        (Component::TextEncoder2, r)
    } else if let Some(r) = key.strip_prefix("text_encoder.") {
        (Component::TextEncoder, r)
    } else if let Some(r) = key.strip_prefix("unet.") {
        (Component::Unet, r)
    } else if ["down_blocks.", "mid_block.", "up_blocks.", "conv_in.", "conv_out.", "time_embedding."]
        .iter()
        .any(|p| key.starts_with(p))
    {
        // diffusers' attention-processor files, the oldest layout, carry no component prefix.
        (Component::Unet, key)
    } else {
        return None;
    };
    if rest.contains("lora_magnitude_vector") {
        return Some(Err("DoRA (weight-decomposed LoRA)"));
    }
    if rest.ends_with(".lora_B.bias") {
        return Some(Err("LoRA with a bias on its up projection (peft's lora_bias)"));
    }
    const ROLES: &[(&str, Role)] = &[
        (".lora_A.weight", Role::Down),
        (".lora_B.weight", Role::Up),
        (".lora_linear_layer.down.weight", Role::Down),
        (".lora_linear_layer.up.weight", Role::Up),
        (".lora.down.weight", Role::Down),
        (".lora.up.weight", Role::Up),
        ("_lora.down.weight", Role::Down),
        ("_lora.up.weight", Role::Up),
        (".alpha", Role::Alpha),
    ];
    let (module, role, old) =
        ROLES.iter().find_map(|(s, r)| rest.strip_suffix(s).map(|m| (m, *r, s.starts_with('_'))))?;
    let mut module = module.replace(".processor.", ".");
    if old {
        // `to_q_lora` and friends name the projection of the attention they adapt.
        let (head, proj) = module.rsplit_once('.').map(|(h, p)| (format!("{h}."), p.to_string())).unwrap_or_default();
        let mapped = match (c, proj.as_str()) {
            (Component::Unet, "to_out") => "to_out.0",
            (Component::Unet, p @ ("to_q" | "to_k" | "to_v")) => p,
            (_, "to_q") => "q_proj",
            (_, "to_k") => "k_proj",
            (_, "to_v") => "v_proj",
            (_, "to_out") => "out_proj",
            _ => return None,
        };
        module = format!("{head}{mapped}");
    }
    if c != Component::Unet && !module.starts_with("text_model.") && module != "text_projection" {
        // transformers 5 names CLIPTextModel's modules without `text_model.`; genlab (and transformers 4) with it.
        module = format!("text_model.{module}");
    }
    Some(Ok((c, module, role)))
}

/// The `lora_adapter_metadata` entry diffusers writes: every component's LoraConfig, keys prefixed by the
/// component's name.
fn peft_scales(path: &Path, metadata: Option<&HashMap<String, String>>) -> Result<HashMap<Component, PeftScale>> {
    let mut out = HashMap::new();
    let Some(text) = metadata.and_then(|m| m.get("lora_adapter_metadata")) else { return Ok(out) };
    let json: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
        .map_err(|e| lora_err(path, format!("the lora_adapter_metadata entry is not a JSON object: {e}")))?;
    for c in [Component::Unet, Component::TextEncoder, Component::TextEncoder2] {
        let get = |k: &str| json.get(&format!("{}.{k}", c.name()));
        if get("r").is_none() && get("lora_alpha").is_none() {
            continue;
        }
        if get("use_dora").and_then(|v| v.as_bool()) == Some(true) {
            return Err(lora_err(path, format!("{}: DoRA adapters (use_dora) are not supported", c.name())));
        }
        let mut scale = PeftScale {
            lora_alpha: get("lora_alpha").and_then(|v| v.as_f64()),
            use_rslora: get("use_rslora").and_then(|v| v.as_bool()).unwrap_or(false),
            ..PeftScale::default()
        };
        if let Some(patterns) = get("alpha_pattern").and_then(|v| v.as_object()) {
            for (p, a) in patterns {
                let re = Regex::new(&format!(r"^(?:.*\.)?(?:{p})$"))
                    .map_err(|e| lora_err(path, format!("{}.alpha_pattern `{p}`: {e}", c.name())))?;
                let a = a.as_f64().ok_or_else(|| {
                    lora_err(path, format!("{}.alpha_pattern `{p}`: expected a number, got {a}", c.name()))
                })?;
                scale.alpha_pattern.push((re, a));
            }
        }
        out.insert(c, scale);
    }
    Ok(out)
}

/// The file's `__metadata__` strings, from its JSON header alone (libtorch reads the tensors).
fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    use std::io::Read;
    let bad = |e: String| lora_err(path, format!("not a readable safetensors header: {e}"));
    let mut file = std::fs::File::open(path).map_err(|e| lora_err(path, format!("cannot read: {e}")))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| bad(e.to_string()))?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        return Err(bad(format!("a header of {n} bytes")));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(|e| bad(e.to_string()))?;
    let json: serde_json::Value = serde_json::from_slice(&header).map_err(|e| bad(e.to_string()))?;
    Ok(json.get("__metadata__").and_then(|m| serde_json::from_value(m.clone()).ok()).unwrap_or_default())
}

impl LoraFile {
    /// Read a `.safetensors` LoRA file. A pickled `.bin`/`.pt`/`.ckpt` is refused (opening one can run code),
    /// as is a file with adapter kinds genlab does not implement (LoHa, LoKr, DoRA), naming the keys.
    pub fn read(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(lora_err(path, "file not found"));
        }
        if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            return Err(lora_err(
                path,
                "only .safetensors LoRA files are read (a pickled .bin, .pt or .ckpt can run code when opened: \
                 convert it to safetensors first)",
            ));
        }
        let named = genlab_core::checkpoint::read_safetensors(path).map_err(|e| match e {
            genlab_core::CoreError::File { message, .. } => lora_err(path, message),
            e => e.into(),
        })?;
        let kohya = named.iter().any(|(k, _)| k.starts_with("lora_unet_") || k.starts_with("lora_te"));
        let format = if kohya {
            LoraFormat::Kohya
        } else if named.iter().any(|(k, _)| k.contains(".lora_A.") || k.contains(".lora_B.")) {
            LoraFormat::Peft
        } else {
            LoraFormat::Diffusers
        };
        let mut layers: BTreeMap<(Component, String), Layer> = BTreeMap::new();
        let mut unrecognised = Vec::new();
        let mut unsupported: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        for (key, t) in named {
            let parsed = match format {
                LoraFormat::Kohya => kohya_key(&key).map(|r| r.map(|(c, n, role)| (c, n.to_string(), role))),
                _ => diffusers_key(&key),
            };
            let (c, module, role) = match parsed {
                None => {
                    unrecognised.push(key);
                    continue;
                }
                Some(Err(kind)) => {
                    unsupported.entry(kind).or_default().push(key);
                    continue;
                }
                Some(Ok(p)) => p,
            };
            let layer = layers.entry((c, module)).or_default();
            match role {
                Role::Down => layer.down = Some((key, t)),
                Role::Up => layer.up = Some((key, t)),
                Role::Alpha => {
                    if t.numel() != 1 {
                        return Err(lora_err(
                            path,
                            format!("{key}: an alpha must be one number, got shape {:?}", t.size()),
                        ));
                    }
                    let a = t.to_kind(tch::Kind::Double).double_value(&[]);
                    layer.alpha = Some((key, a));
                }
            }
        }
        if let Some((kind, keys)) = unsupported.into_iter().next() {
            return Err(lora_err(path, format!("{kind} adapters are not supported (keys {})", list(&keys))));
        }
        if layers.is_empty() {
            return Err(lora_err(
                path,
                format!(
                    "no LoRA weights found (expected kohya, peft or diffusers keys); the file has {}",
                    list(&unrecognised)
                ),
            ));
        }
        let scales =
            if format == LoraFormat::Peft { peft_scales(path, Some(&read_metadata(path)?))? } else { HashMap::new() };
        Ok(LoraFile { path: path.to_path_buf(), format, layers, unrecognised, scales })
    }

    /// Attach the file to `model` as adapter `adapter` with `weight`. Every layer is checked first: a layer
    /// whose down or up projection is missing, or whose shapes do not fit the model's layer, is an error naming
    /// the key and both shapes; keys that match no layer are an error listing them unless `allow_unmatched`.
    /// Nothing is attached unless everything checks.
    pub fn attach(
        &self,
        model: &ModelTargets<'_>,
        adapter: &str,
        weight: f64,
        allow_unmatched: bool,
    ) -> Result<LoraReport> {
        let path = &self.path;
        let kohya: HashMap<Component, HashMap<String, String>> = if self.format == LoraFormat::Kohya {
            [Component::Unet, Component::TextEncoder, Component::TextEncoder2]
                .into_iter()
                .map(|c| (c, model.kohya_names(c)))
                .collect()
        } else {
            HashMap::new()
        };
        let mut unmatched = self.unrecognised.clone();
        let mut plan: Vec<(Target, &Tensor, &Tensor, f64)> = Vec::new();
        let mut misfits = Vec::new();
        for ((c, module), layer) in &self.layers {
            let keys = || {
                [layer.down.as_ref().map(|d| &d.0), layer.up.as_ref().map(|u| &u.0), layer.alpha.as_ref().map(|a| &a.0)]
                    .into_iter()
                    .flatten()
                    .cloned()
                    .collect::<Vec<_>>()
            };
            let (Some((down_key, down)), Some((up_key, up))) = (&layer.down, &layer.up) else {
                let (has, lacks) = if layer.down.is_some() { ("down", "up") } else { ("up", "down") };
                return Err(lora_err(
                    path,
                    format!("{}: {} has a {has} projection but no {lacks} projection", c.name(), keys().join(", ")),
                ));
            };
            let name = match self.format {
                LoraFormat::Kohya => kohya.get(c).and_then(|m| m.get(module)).cloned(),
                _ => Some(module.clone()),
            };
            let Some(target) = name.and_then(|n| model.of(*c).and_then(|t| t.get(&n))) else {
                unmatched.extend(keys());
                continue;
            };
            let r = match target.check(adapter, down, up) {
                Ok(r) => r,
                Err(e) => {
                    misfits.push(format!("{down_key} / {up_key}: {e}"));
                    continue;
                }
            };
            let alpha = match &layer.alpha {
                Some((_, a)) => *a,
                None => {
                    let short = target.name().strip_prefix("text_model.").unwrap_or(target.name());
                    self.scales.get(c).and_then(|s| s.alpha(&[target.name(), short])).unwrap_or(r as f64)
                }
            };
            let rslora = self.scales.get(c).is_some_and(|s| s.use_rslora);
            let scale = if rslora { alpha / (r as f64).sqrt() } else { alpha / r as f64 };
            plan.push((target.clone(), down, up, scale));
        }
        // Unmatched names first: when a file is for another architecture, they say so better than shapes.
        if !unmatched.is_empty() && (!allow_unmatched || plan.is_empty()) {
            let hint = if plan.is_empty() {
                "no layer matches: a LoRA for another architecture, such as an SD 1.x LoRA on SDXL?"
            } else {
                "allow them with --lora-allow-unmatched"
            };
            let misfit = match misfits.len() {
                0 => String::new(),
                n => format!("; {n} more layers do not fit, the first: {}", misfits[0]),
            };
            return Err(lora_err(
                path,
                format!("{} keys match no layer of this model ({hint}): {}{misfit}", unmatched.len(), list(&unmatched)),
            ));
        }
        if !misfits.is_empty() {
            return Err(lora_err(path, format!("{} layers do not fit the model: {}", misfits.len(), list(&misfits))));
        }
        for (i, (target, down, up, scale)) in plan.iter().enumerate() {
            if let Err(e) = target.attach(adapter, down, up, *scale, weight) {
                // Take back what was attached, so a failed file leaves the model as it was.
                plan[..i].iter().for_each(|(t, ..)| {
                    t.remove(adapter);
                });
                return Err(lora_err(path, e.to_string()));
            }
        }
        Ok(LoraReport {
            path: path.clone(),
            adapter: adapter.to_string(),
            format: self.format,
            weight,
            layers: plan.len(),
            unmatched,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_split_a_numeric_weight_only() {
        let s: LoraSpec = "style.safetensors:0.7".parse().unwrap();
        assert_eq!(s, LoraSpec { path: "style.safetensors".into(), weight: 0.7 });
        let s: LoraSpec = "dir:with:colons/x.safetensors".parse().unwrap();
        assert_eq!(s.weight, 1.0);
        assert_eq!(s.path, PathBuf::from("dir:with:colons/x.safetensors"));
        assert_eq!("x.safetensors:-1".parse::<LoraSpec>().unwrap().weight, -1.0);
        assert!("x.safetensors:inf".parse::<LoraSpec>().is_err());
        assert!("".parse::<LoraSpec>().is_err());
    }

    #[test]
    fn kohya_keys_give_component_name_and_role_or_name_the_unsupported_kind() {
        assert_eq!(
            kohya_key("lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"),
            Some(Ok((Component::TextEncoder2, "text_model_encoder_layers_0_mlp_fc1", Role::Up)))
        );
        assert_eq!(kohya_key("lora_unet_mid_block_attentions_0_proj_in.alpha").unwrap().unwrap().2, Role::Alpha);
        assert_eq!(kohya_key("lora_unet_x.hada_w1_a"), Some(Err("LyCORIS LoHa")));
        assert_eq!(kohya_key("something_else.weight"), None);
    }

    #[test]
    fn diffusers_and_peft_keys_normalise_to_genlab_layer_names() {
        let k = |s: &str| diffusers_key(s).unwrap().unwrap();
        assert_eq!(
            k("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight"),
            (Component::Unet, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0".into(), Role::Up)
        );
        assert_eq!(
            k("text_encoder.text_model.encoder.layers.1.self_attn.to_k_lora.down.weight"),
            (Component::TextEncoder, "text_model.encoder.layers.1.self_attn.k_proj".into(), Role::Down)
        );
        assert_eq!(
            k("text_encoder_2.encoder.layers.0.mlp.fc2.lora_linear_layer.down.weight"),
            (Component::TextEncoder2, "text_model.encoder.layers.0.mlp.fc2".into(), Role::Down)
        );
        assert_eq!(k("text_encoder_2.text_projection.lora_A.weight").1, "text_projection");
        assert_eq!(k("mid_block.attentions.0.proj_out.lora.down.weight").0, Component::Unet);
        assert_eq!(k("unet.up_blocks.1.resnets.0.conv1.alpha").2, Role::Alpha);
        assert!(diffusers_key("unet.x.lora_magnitude_vector").unwrap().is_err());
        assert!(diffusers_key("vae.decoder.conv_in.weight").is_none());
    }

    #[test]
    fn alpha_patterns_match_whole_dotted_suffixes_as_peft_does() {
        let s = PeftScale {
            lora_alpha: Some(4.0),
            alpha_pattern: vec![(Regex::new(r"^(?:.*\.)?(?:resnets.0.conv1)$").unwrap(), 6.0)],
            use_rslora: false,
        };
        assert_eq!(s.alpha(&["down_blocks.1.resnets.0.conv1"]), Some(6.0));
        assert_eq!(s.alpha(&["down_blocks.1.resnets.10.conv1"]), Some(4.0));
        assert_eq!(s.alpha(&["down_blocks.1.xresnets.0.conv1"]), Some(4.0));
    }
}
