//! `--config FILE`: a TOML file whose keys are flag names (`steps = 500`,
//! `batch-size = 64`, `resume = true`). Its flags are inserted before the user's own,
//! and since every flag may be repeated with the last one winning, flags on the command
//! line override the file.
use anyhow::{bail, Context, Result};
use std::ffi::OsString;

/// Expand `--config FILE` in `args` (argv without the program name).
pub fn expand(args: Vec<OsString>) -> Result<Vec<OsString>> {
    let strs: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let mut file = None;
    let mut i = 0;
    while i < strs.len() {
        if strs[i] == "--config" {
            let Some(f) = strs.get(i + 1) else { bail!("--config needs a file name") };
            file = Some(f.clone());
            i += 1;
        } else if let Some(f) = strs[i].strip_prefix("--config=") {
            file = Some(f.to_string());
        }
        i += 1;
    }
    let Some(file) = file else { return Ok(args) };
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading config file {file}"))?;
    let table: toml::Table = text.parse().with_context(|| format!("{file}: not valid TOML"))?;
    let mut injected = Vec::new();
    for (key, value) in table {
        let flag = format!("--{}", key.replace('_', "-"));
        match value {
            toml::Value::Boolean(true) => injected.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::String(s) => injected.extend([flag, s]),
            toml::Value::Integer(n) => injected.extend([flag, n.to_string()]),
            toml::Value::Float(x) => injected.extend([flag, x.to_string()]),
            other => bail!("{file}: `{key}` must be a string, number or boolean, found {}", other.type_str()),
        }
    }
    // Insert after the subcommand words (the leading arguments that are not flags).
    let at = strs.iter().position(|a| a.starts_with('-')).unwrap_or(strs.len());
    let mut out: Vec<OsString> = args[..at].to_vec();
    out.extend(injected.into_iter().map(OsString::from));
    out.extend(args[at..].iter().cloned());
    Ok(out)
}
