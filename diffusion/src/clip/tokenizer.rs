//! The CLIP byte-level BPE tokenizer (Radford et al. 2021), as Stable Diffusion's text
//! encoders use it.
//!
//! Follows OpenAI CLIP's `simple_tokenizer.py` (also open_clip's `SimpleTokenizer` and
//! transformers' `CLIPTokenizer`): the text is cleaned (HTML entities unescaped, whitespace
//! collapsed, lowercased), split by CLIP's pattern (`'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+`),
//! each piece's UTF-8 bytes are mapped to printable characters (`bytes_to_unicode`), the last
//! one marked with `</w>`, and BPE merges are applied lowest rank first.
//!
//! Sources of the vocabulary:
//! - [`ClipTokenizer::from_bpe_file`]: OpenAI's merges file `bpe_simple_vocab_16e6.txt(.gz)`
//!   (shipped in open-clip-torch; `cargo xtask download clip-vocab` fetches it). The vocabulary
//!   is built from it as `simple_tokenizer.py` does: 256 byte characters, the same with `</w>`,
//!   the first 48,894 merges, then `<|startoftext|>` (49406) and `<|endoftext|>` (49407).
//! - [`ClipTokenizer::from_vocab_merges`]: a Hugging Face `vocab.json` + `merges.txt` pair.
//! - [`ClipTokenizer::from_tokenizer_json`]: a Hugging Face `tokenizer.json` (BPE model).
//! - [`ClipTokenizer::from_dir`]: a model's `tokenizer/` folder (either form), with the padding
//!   token and maximum length from its `special_tokens_map.json` / `tokenizer_config.json`.
//!
//! [`ClipTokenizer::encode_padded`] gives what diffusers' pipelines feed the text encoder
//! (`padding="max_length", truncation=True`): the start token, at most `max_length - 2` ids, the
//! end token, then the padding token (the end token for SD 1.x, `!` = 0 for SD 2.x) up to
//! `max_length` (77).
//!
//! Not done: ftfy's repair of mis-decoded text (mojibake) and its NFC normalisation, which the
//! reference applies first; text that needs them tokenises differently. HTML entities are
//! unescaped for the named ones in [`unescape_html`] and every numeric one.
use crate::error::{DiffusionError, Result};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// The start token's text.
pub const BOS: &str = "<|startoftext|>";
/// The end token's text.
pub const EOS: &str = "<|endoftext|>";
/// The text encoders' context length.
pub const MAX_LENGTH: usize = 77;
/// Merges used from OpenAI's merges file: `49152 - 256 - 2`.
const OPENAI_MERGES: usize = 49152 - 256 - 2;

/// A CLIP BPE tokenizer. Cheap to share; [`ClipTokenizer::encode`] takes `&self`.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    encoder: HashMap<String, i64>,
    decoder: HashMap<i64, String>,
    ranks: HashMap<(String, String), usize>,
    byte_encoder: [char; 256],
    byte_decoder: HashMap<char, u8>,
    pattern: regex::Regex,
    /// Id of `<|startoftext|>`.
    pub bos_id: i64,
    /// Id of `<|endoftext|>`.
    pub eos_id: i64,
    /// Id that fills a padded sequence.
    pub pad_id: i64,
    /// Length of a padded sequence (77).
    pub max_length: usize,
    /// Tokens added after the vocabulary (textual-inversion embeddings), longest first: the text and the ids
    /// it stands for (several for a multi-vector token).
    added: Vec<(String, Vec<i64>)>,
}

fn tok_err(path: &Path, message: impl Into<String>) -> DiffusionError {
    DiffusionError::Tokenizer { path: path.to_path_buf(), message: message.into() }
}

/// GPT-2's reversible map from bytes to printable characters: the printable Latin-1 bytes map
/// to themselves, the other 68 to U+0100 onwards.
pub fn bytes_to_unicode() -> [char; 256] {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut out = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let c = if printable(b) {
            b
        } else {
            n += 1;
            255 + n
        };
        out[b as usize] = char::from_u32(c).unwrap_or('\u{fffd}');
    }
    out
}

/// `html.unescape`, for numeric references and the named entities prompts use
/// (`&amp; &lt; &gt; &quot; &apos; &nbsp;` and a few typographic ones).
pub fn unescape_html(text: &str) -> String {
    const NAMED: &[(&str, &str)] = &[
        ("amp", "&"),
        ("lt", "<"),
        ("gt", ">"),
        ("quot", "\""),
        ("apos", "'"),
        ("nbsp", "\u{a0}"),
        ("ndash", "\u{2013}"),
        ("mdash", "\u{2014}"),
        ("hellip", "\u{2026}"),
        ("lsquo", "\u{2018}"),
        ("rsquo", "\u{2019}"),
        ("ldquo", "\u{201c}"),
        ("rdquo", "\u{201d}"),
        ("copy", "\u{a9}"),
        ("reg", "\u{ae}"),
        ("trade", "\u{2122}"),
        ("deg", "\u{b0}"),
        ("times", "\u{d7}"),
        ("eacute", "\u{e9}"),
    ];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let end = rest[1..].find(';').map(|j| j + 1).filter(|&j| j <= 33);
        let decoded = end.and_then(|j| {
            let name = &rest[1..j];
            let c = if let Some(num) = name.strip_prefix('#') {
                let v = match num.strip_prefix(['x', 'X']) {
                    Some(hex) => u32::from_str_radix(hex, 16).ok(),
                    None => num.parse::<u32>().ok(),
                };
                v.and_then(char::from_u32).map(String::from)
            } else {
                NAMED.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
            };
            c.map(|c| (c, j + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push_str(&c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The reference's `basic_clean` (HTML unescaped twice) then `whitespace_clean`, lowercased.
pub fn clean(text: &str) -> String {
    let t = unescape_html(&unescape_html(text));
    t.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| {
        let hint = if path.to_string_lossy().contains("bpe_simple_vocab") {
            " (cargo xtask download clip-vocab fetches it)"
        } else {
            ""
        };
        tok_err(path, format!("cannot read: {e}{hint}"))
    })?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut s = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut s)
            .map_err(|e| tok_err(path, format!("not a valid gzip text file: {e}")))?;
        Ok(s)
    } else {
        String::from_utf8(bytes).map_err(|e| tok_err(path, format!("not UTF-8 text: {e}")))
    }
}

/// Merge lines (`a b`), skipping blank lines and a header line: the first line when
/// `header` (OpenAI's file starts with `"bpe_simple_vocab_16e6.txt#version: 0.2`), else a first
/// line that starts with `#version` (Hugging Face's `merges.txt`).
fn parse_merges(path: &Path, text: &str, header: bool, limit: Option<usize>) -> Result<Vec<(String, String)>> {
    let mut merges = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if (n == 0 && (header || line.starts_with("#version"))) || line.trim().is_empty() {
            continue;
        }
        if limit.is_some_and(|l| merges.len() >= l) {
            break;
        }
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => merges.push((a.to_string(), b.to_string())),
            _ => return Err(tok_err(path, format!("line {}: expected a merge `A B`, found {line:?}", n + 1))),
        }
    }
    if merges.is_empty() {
        return Err(tok_err(path, "no merges found"));
    }
    Ok(merges)
}

impl ClipTokenizer {
    fn build(path: &Path, encoder: HashMap<String, i64>, merges: Vec<(String, String)>) -> Result<Self> {
        let id = |t: &str| {
            encoder.get(t).copied().ok_or_else(|| tok_err(path, format!("the vocabulary has no `{t}` token")))
        };
        let (bos_id, eos_id) = (id(BOS)?, id(EOS)?);
        let byte_encoder = bytes_to_unicode();
        for c in byte_encoder {
            if !encoder.contains_key(&c.to_string()) {
                return Err(tok_err(
                    path,
                    format!("the vocabulary lacks the byte symbol {c:?}: not a CLIP vocabulary"),
                ));
            }
        }
        let byte_decoder = byte_encoder.iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
        let decoder = encoder.iter().map(|(k, &v)| (v, k.clone())).collect();
        let ranks = merges.into_iter().enumerate().map(|(i, m)| (m, i)).collect();
        let pattern = regex::Regex::new(
            r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+",
        )
        .map_err(|e| tok_err(path, format!("pattern: {e}")))?;
        Ok(ClipTokenizer {
            encoder,
            decoder,
            ranks,
            byte_encoder,
            byte_decoder,
            pattern,
            bos_id,
            eos_id,
            pad_id: eos_id,
            max_length: MAX_LENGTH,
            added: Vec::new(),
        })
    }

    /// From OpenAI's merges file `bpe_simple_vocab_16e6.txt` (gzipped or not). Pads with the end token.
    pub fn from_bpe_file(path: &Path) -> Result<Self> {
        let text = read_text(path)?;
        let merges = parse_merges(path, &text, true, Some(OPENAI_MERGES))?;
        // The byte symbols in the reference's order: the printable bytes first, then the rest.
        let map = bytes_to_unicode();
        let (printable, other): (Vec<usize>, Vec<usize>) = (0..256).partition(|&b| map[b] as u32 == b as u32);
        let bytes: Vec<String> = printable.into_iter().chain(other).map(|b| map[b].to_string()).collect();
        let vocab = bytes
            .iter()
            .cloned()
            .chain(bytes.iter().map(|b| format!("{b}</w>")))
            .chain(merges.iter().map(|(a, b)| format!("{a}{b}")))
            .chain([BOS.to_string(), EOS.to_string()]);
        let encoder = vocab.enumerate().map(|(i, t)| (t, i as i64)).collect();
        Self::build(path, encoder, merges)
    }

    /// From a Hugging Face `vocab.json` (token -> id) and `merges.txt`.
    pub fn from_vocab_merges(vocab: &Path, merges: &Path) -> Result<Self> {
        let encoder: HashMap<String, i64> = serde_json::from_str(&read_text(vocab)?)
            .map_err(|e| tok_err(vocab, format!("expected a JSON object of token -> id: {e}")))?;
        let merges = parse_merges(merges, &read_text(merges)?, false, None)?;
        Self::build(vocab, encoder, merges)
    }

    /// From a Hugging Face `tokenizer.json` whose model is BPE (merges as `"a b"` strings or pairs).
    pub fn from_tokenizer_json(path: &Path) -> Result<Self> {
        let v: serde_json::Value =
            serde_json::from_str(&read_text(path)?).map_err(|e| tok_err(path, format!("not JSON: {e}")))?;
        let model = &v["model"];
        if model["type"].as_str().is_some_and(|t| t != "BPE") {
            return Err(tok_err(path, format!("model.type is {}, expected BPE", model["type"])));
        }
        let vocab = model["vocab"].as_object().ok_or_else(|| tok_err(path, "model.vocab is missing"))?;
        let mut encoder: HashMap<String, i64> = HashMap::with_capacity(vocab.len());
        for (k, id) in vocab {
            let id = id.as_i64().ok_or_else(|| tok_err(path, format!("model.vocab[{k:?}] is not an integer id")))?;
            encoder.insert(k.clone(), id);
        }
        for t in v["added_tokens"].as_array().into_iter().flatten() {
            if let (Some(c), Some(id)) = (t["content"].as_str(), t["id"].as_i64()) {
                encoder.insert(c.to_string(), id);
            }
        }
        let list = model["merges"].as_array().ok_or_else(|| tok_err(path, "model.merges is missing"))?;
        let mut merges = Vec::with_capacity(list.len());
        for (i, m) in list.iter().enumerate() {
            let pair = match m {
                serde_json::Value::String(s) => s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())),
                serde_json::Value::Array(a) if a.len() == 2 => {
                    a[0].as_str().zip(a[1].as_str()).map(|(x, y)| (x.to_string(), y.to_string()))
                }
                _ => None,
            };
            merges.push(pair.ok_or_else(|| tok_err(path, format!("model.merges[{i}] is not a merge: {m}")))?);
        }
        Self::build(path, encoder, merges)
    }

    /// From a model's `tokenizer/` folder: `vocab.json` + `merges.txt`, else `tokenizer.json`;
    /// the padding token and `model_max_length` from `special_tokens_map.json` and
    /// `tokenizer_config.json` where present.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let (vocab, merges, json) = (dir.join("vocab.json"), dir.join("merges.txt"), dir.join("tokenizer.json"));
        let mut tok = if vocab.is_file() && merges.is_file() {
            Self::from_vocab_merges(&vocab, &merges)?
        } else if json.is_file() {
            Self::from_tokenizer_json(&json)?
        } else {
            return Err(tok_err(dir, "no tokenizer here: expected vocab.json + merges.txt, or tokenizer.json"));
        };
        let read_json = |name: &str| -> Result<Option<serde_json::Value>> {
            let p = dir.join(name);
            if !p.is_file() {
                return Ok(None);
            }
            serde_json::from_str(&read_text(&p)?).map(Some).map_err(|e| tok_err(&p, format!("not JSON: {e}")))
        };
        let token_text = |v: &serde_json::Value| -> Option<String> {
            v.as_str().map(String::from).or_else(|| v["content"].as_str().map(String::from))
        };
        let config = read_json("tokenizer_config.json")?;
        let special = read_json("special_tokens_map.json")?;
        let pad = special
            .as_ref()
            .and_then(|s| token_text(&s["pad_token"]))
            .or_else(|| config.as_ref().and_then(|c| token_text(&c["pad_token"])));
        if let Some(pad) = pad {
            tok.pad_id = tok.token_id(&pad).ok_or_else(|| {
                tok_err(&dir.join("special_tokens_map.json"), format!("pad token {pad:?} is not in the vocabulary"))
            })?;
        }
        if let Some(n) = config.as_ref().and_then(|c| c["model_max_length"].as_u64()) {
            // Some exports write a huge sentinel for "no limit"; CLIP's context is 77.
            if (2..=4096).contains(&n) {
                tok.max_length = n as usize;
            }
        }
        Ok(tok)
    }

    /// Pad with `id` instead (SD 2.x tokenizers pad with "!", id 0).
    pub fn set_pad_id(&mut self, id: i64) {
        self.pad_id = id;
    }

    /// The padding id.
    pub fn pad_id(&self) -> i64 {
        self.pad_id
    }

    /// The id of a token's text (`"cat</w>"`, `"<|endoftext|>"`).
    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.encoder.get(token).copied()
    }

    /// The text of token `id` (`"cat</w>"`).
    pub fn decode_token(&self, id: i64) -> Option<String> {
        self.decoder.get(&id).cloned()
    }

    /// Number of tokens in the vocabulary, added tokens included (the next added token's id).
    pub fn vocab_size(&self) -> usize {
        self.encoder.len()
    }

    /// Add `token` standing for `vectors` new ids (transformers' `add_tokens`, as diffusers'
    /// `load_textual_inversion` uses it): a multi-vector token also adds `token_1` ... `token_{n-1}` and
    /// expands to all of them wherever it appears, as diffusers' `maybe_convert_prompt` rewrites prompts.
    /// Matching is on the cleaned, lowercased text, so the token is lowercased. Returns the new ids; a token
    /// (or one of its `_i` names) already in the vocabulary is an error naming it.
    pub fn add_token(&mut self, token: &str, vectors: usize) -> std::result::Result<Vec<i64>, String> {
        let token = token.trim().to_lowercase();
        if token.is_empty() || token.contains(char::is_whitespace) || vectors == 0 {
            return Err(format!("`{token}` with {vectors} vectors: a token is one word with at least one vector"));
        }
        let names: Vec<String> =
            std::iter::once(token.clone()).chain((1..vectors).map(|i| format!("{token}_{i}"))).collect();
        if let Some(taken) = names.iter().find(|n| self.encoder.contains_key(*n)) {
            return Err(format!("the token `{taken}` is in the tokenizer's vocabulary already: choose another token"));
        }
        let first = self.encoder.len() as i64;
        let ids: Vec<i64> = (first..first + vectors as i64).collect();
        for (i, (n, &id)) in names.iter().zip(&ids).enumerate() {
            self.encoder.insert(n.clone(), id);
            self.decoder.insert(id, n.clone());
            // The token itself stands for all its vectors; `token_i` for its own.
            self.added.push((n.clone(), if i == 0 { ids.clone() } else { vec![id] }));
        }
        self.added.sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
        Ok(ids)
    }

    /// The ids of `text` split around the added tokens (longest first), the rest by BPE.
    fn encode_cleaned(&self, text: &str, ids: &mut Vec<i64>) {
        if !self.added.is_empty() {
            let mut start = 0;
            for (i, _) in text.char_indices() {
                if i < start {
                    continue;
                }
                if let Some((t, token_ids)) = self.added.iter().find(|(t, _)| text[i..].starts_with(t.as_str())) {
                    self.encode_bpe(&text[start..i], ids);
                    ids.extend_from_slice(token_ids);
                    start = i + t.len();
                }
            }
            self.encode_bpe(&text[start..], ids);
            return;
        }
        self.encode_bpe(text, ids);
    }

    /// BPE of one pre-token already mapped to byte symbols; the symbols of the result.
    fn bpe(&self, token: &str) -> Vec<String> {
        let chars: Vec<char> = token.chars().collect();
        let mut word: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
        if let Some(last) = word.last_mut() {
            last.push_str("</w>");
        }
        while word.len() > 1 {
            let best = word
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| self.ranks.get(&(w[0].clone(), w[1].clone())).map(|&r| (r, i)))
                .min();
            let Some((_, i)) = best else { break };
            let (first, second) = (word[i].clone(), word[i + 1].clone());
            // Merge every occurrence of the pair, left to right, as the reference does.
            let mut merged = Vec::with_capacity(word.len());
            let mut j = 0;
            while j < word.len() {
                if j + 1 < word.len() && word[j] == first && word[j + 1] == second {
                    merged.push(format!("{first}{second}"));
                    j += 2;
                } else {
                    merged.push(std::mem::take(&mut word[j]));
                    j += 1;
                }
            }
            word = merged;
        }
        word
    }

    /// The ids of `text`, without start, end or padding tokens.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let mut ids = Vec::new();
        self.encode_cleaned(&clean(text), &mut ids);
        ids
    }

    /// BPE ids of cleaned text, appended to `ids`.
    fn encode_bpe(&self, text: &str, ids: &mut Vec<i64>) {
        for m in self.pattern.find_iter(text) {
            let piece = m.as_str();
            if piece == BOS || piece == EOS {
                ids.push(if piece == BOS { self.bos_id } else { self.eos_id });
                continue;
            }
            let mapped: String = piece.bytes().map(|b| self.byte_encoder[b as usize]).collect();
            for sym in self.bpe(&mapped) {
                // Every byte symbol (with and without `</w>`) is in a CLIP vocabulary ([`Self::build`]
                // checks the bare ones), so a symbol is only missing from a damaged vocabulary.
                if let Some(&id) = self.encoder.get(&sym) {
                    ids.push(id);
                } else {
                    for c in sym.trim_end_matches("</w>").chars() {
                        ids.extend(self.encoder.get(&c.to_string()));
                    }
                }
            }
        }
    }

    /// The text encoder's input: start token, at most `max_length - 2` ids of `text`, end
    /// token, padding to `max_length`.
    pub fn encode_padded(&self, text: &str) -> Vec<i64> {
        let ids = self.encode(text);
        let keep = ids.len().min(self.max_length.saturating_sub(2));
        let mut out = Vec::with_capacity(self.max_length);
        out.push(self.bos_id);
        out.extend_from_slice(&ids[..keep]);
        out.push(self.eos_id);
        out.resize(self.max_length, self.pad_id);
        out
    }

    /// [`Self::encode_padded`] of every prompt, as an int64 tensor [n, max_length].
    pub fn encode_batch(&self, texts: &[&str]) -> tch::Tensor {
        let flat: Vec<i64> = texts.iter().flat_map(|t| self.encode_padded(t)).collect();
        tch::Tensor::from_slice(&flat).view([texts.len() as i64, self.max_length as i64])
    }

    /// Text of `ids` (special tokens included as text; `</w>` becomes a space).
    pub fn decode(&self, ids: &[i64]) -> String {
        let text: String = ids.iter().filter_map(|id| self.decoder.get(id)).map(String::as_str).collect();
        let mut bytes = Vec::with_capacity(text.len());
        for c in text.chars() {
            match self.byte_decoder.get(&c) {
                Some(&b) => bytes.push(b),
                None => {
                    let mut buf = [0u8; 4];
                    bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        String::from_utf8_lossy(&bytes).replace("</w>", " ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_to_unicode_is_a_bijection_onto_printable_characters() {
        let m = bytes_to_unicode();
        let set: std::collections::HashSet<char> = m.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(m[b'a' as usize], 'a');
        assert_eq!(m[b' ' as usize], '\u{120}');
        assert!(m.iter().all(|c| !c.is_whitespace() && !c.is_control()));
    }

    #[test]
    fn unescape_and_clean() {
        assert_eq!(unescape_html("Tom &amp; Jerry &lt;3 &#65;&#x42; &bogus; & x"), "Tom & Jerry <3 AB &bogus; & x");
        assert_eq!(clean("  A\tB \n C &amp;amp; "), "a b c &");
    }
}
