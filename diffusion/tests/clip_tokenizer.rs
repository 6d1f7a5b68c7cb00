//! The CLIP tokenizer against open_clip's `SimpleTokenizer` on the real vocabulary
//! (reference ids from `reference/clip_tokenizer.py`), and its Hugging Face file formats.
use anyhow::{Context, Result};
use genlab_diffusion::clip::{self, ClipTokenizer};
use std::path::PathBuf;

fn vocab() -> Result<PathBuf> {
    let p = clip::default_vocab_path().context("neither GENLAB_DATA_DIR nor HOME is set")?;
    anyhow::ensure!(p.is_file(), "{} is missing: run `cargo xtask download clip-vocab`", p.display());
    Ok(p)
}

fn reference() -> Result<serde_json::Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/clip_tokenizer.json");
    Ok(serde_json::from_str(&std::fs::read_to_string(&path).with_context(|| path.display().to_string())?)?)
}

fn ids(v: &serde_json::Value) -> Vec<i64> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_i64()).collect()).unwrap_or_default()
}

#[test]
fn matches_open_clip_on_the_real_vocabulary() -> Result<()> {
    let tok = ClipTokenizer::from_bpe_file(&vocab()?)?;
    let r = reference()?;
    assert_eq!(tok.vocab_size() as i64, r["vocab_size"].as_i64().unwrap_or(-1));
    assert_eq!((tok.bos_id, tok.eos_id, tok.pad_id), (49406, 49407, 49407));
    assert_eq!(tok.encode_padded("a photo of a cat")[..7], [49406, 320, 1125, 539, 320, 2368, 49407]);
    let cases = r["cases"].as_array().context("cases")?;
    assert!(cases.len() >= 10);
    for case in cases {
        let prompt = case["prompt"].as_str().context("prompt")?;
        assert_eq!(tok.encode(prompt), ids(&case["ids"]), "ids of {prompt:?}");
        let padded = tok.encode_padded(prompt);
        assert_eq!(padded.len(), 77);
        assert_eq!(padded, ids(&case["padded"]), "padded ids of {prompt:?}");
        assert_eq!(tok.decode(&tok.encode(prompt)), case["decoded"].as_str().unwrap_or_default(), "{prompt:?}");
    }
    // Truncation keeps the end token last.
    let long = tok.encode_padded(&"word ".repeat(200));
    assert_eq!((long[0], long[75], long[76]), (49406, 2653, 49407));
    let batch = tok.encode_batch(&["a photo of a cat", ""]);
    assert_eq!(batch.size(), [2, 77]);
    assert_eq!(batch.int64_value(&[1, 1]), 49407);
    Ok(())
}

#[test]
fn hugging_face_files_give_the_same_ids_and_their_padding_token() -> Result<()> {
    let tok = ClipTokenizer::from_bpe_file(&vocab()?)?;
    let dir = tempfile::tempdir()?;
    // A Hugging Face CLIPTokenizer folder holds the same vocabulary as vocab.json + merges.txt.
    let text = {
        use std::io::Read;
        let mut s = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(vocab()?)?).read_to_string(&mut s)?;
        s
    };
    let merges: Vec<&str> = text.lines().skip(1).take(49152 - 256 - 2).collect();
    std::fs::write(dir.path().join("merges.txt"), format!("#version: 0.2\n{}\n", merges.join("\n")))?;
    let mut vocab = serde_json::Map::new();
    for id in 0..tok.vocab_size() as i64 {
        vocab.insert(tok.decode_token(id).context("token")?, id.into());
    }
    std::fs::write(dir.path().join("vocab.json"), serde_json::Value::Object(vocab.clone()).to_string())?;
    let prompts = ["a photo of a cat", "an astronaut riding a horse, 4k", "日本の桜 café"];
    let hf = ClipTokenizer::from_dir(dir.path())?;
    assert_eq!(hf.pad_id, 49407, "no special_tokens_map.json: pad with the end token");
    for p in prompts {
        assert_eq!(hf.encode_padded(p), tok.encode_padded(p));
    }
    // SD 2.x pads with "!" (id 0).
    std::fs::write(dir.path().join("special_tokens_map.json"), r#"{"pad_token": "!", "eos_token": "<|endoftext|>"}"#)?;
    let sd2 = ClipTokenizer::from_dir(dir.path())?;
    assert_eq!(sd2.pad_id, 0);
    assert_eq!(sd2.encode_padded("a photo of a cat")[6..9], [49407, 0, 0]);
    // tokenizer.json (Hugging Face `tokenizers`), merges as pairs.
    let json_dir = tempfile::tempdir()?;
    let pairs: Vec<serde_json::Value> =
        merges.iter().map(|m| serde_json::json!(m.split(' ').collect::<Vec<_>>())).collect();
    let tj = serde_json::json!({"model": {"type": "BPE", "vocab": vocab, "merges": pairs}, "added_tokens": []});
    std::fs::write(json_dir.path().join("tokenizer.json"), tj.to_string())?;
    let from_json = ClipTokenizer::from_dir(json_dir.path())?;
    for p in prompts {
        assert_eq!(from_json.encode(p), tok.encode(p));
    }
    Ok(())
}

#[test]
fn bad_files_name_themselves() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let err = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("vocab.json") && err.contains(&dir.path().display().to_string()), "{err}");
    let missing = dir.path().join("bpe_simple_vocab_16e6.txt.gz");
    let err = ClipTokenizer::from_bpe_file(&missing).unwrap_err().to_string();
    assert!(err.contains("cargo xtask download clip-vocab"), "{err}");
    std::fs::write(dir.path().join("vocab.json"), "{\"a\": 0}")?;
    std::fs::write(dir.path().join("merges.txt"), "#version: 0.2\na b c\n")?;
    let err = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("merges.txt") && err.contains("line 2"), "{err}");
    std::fs::write(dir.path().join("merges.txt"), "#version: 0.2\na b\n")?;
    let err = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("vocab.json") && err.contains("<|startoftext|>"), "{err}");
    Ok(())
}
