//! The IDX format of MNIST and Fashion-MNIST (LeCun et al.), gzipped or not.
//! Magic: two zero bytes, a type byte (0x08 = u8), the number of dimensions; then
//! big-endian u32 sizes, then the data.
use crate::error::{DataError, Result};
use std::io::Read;
use std::path::Path;

/// Read a whole IDX file (gunzipping when it starts with the gzip magic).
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out).map_err(|e| {
            DataError::format(path, format!("corrupt gzip stream after {} decompressed bytes: {e}", out.len()))
        })?;
        out
    } else {
        raw
    };
    parse_idx(&bytes).map_err(|m| DataError::format(path, m))
}

/// Parse IDX bytes into (dims, u8 data).
pub fn parse_idx(b: &[u8]) -> std::result::Result<(Vec<usize>, Vec<u8>), String> {
    if b.len() < 4 {
        return Err(format!("too short for an IDX header ({} bytes)", b.len()));
    }
    if b[0] != 0 || b[1] != 0 {
        return Err(format!("wrong IDX magic at offset 0: {:02x} {:02x} (expected 00 00)", b[0], b[1]));
    }
    if b[2] != 0x08 {
        return Err(format!("IDX type byte 0x{:02x} at offset 2 is not 0x08 (unsigned byte)", b[2]));
    }
    let nd = b[3] as usize;
    if nd == 0 || nd > 4 {
        return Err(format!("IDX dimension count {nd} at offset 3 is not in 1..=4"));
    }
    let header = 4 + 4 * nd;
    if b.len() < header {
        return Err(format!("IDX header needs {header} bytes, file has {}", b.len()));
    }
    let dims: Vec<usize> = (0..nd)
        .map(|i| u32::from_be_bytes([b[4 + 4 * i], b[5 + 4 * i], b[6 + 4 * i], b[7 + 4 * i]]) as usize)
        .collect();
    let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("IDX sizes overflow")?;
    let have = b.len() - header;
    if have != n {
        return Err(format!("IDX header at offset 4 says {dims:?} = {n} bytes of data, file has {have}"));
    }
    Ok((dims, b[header..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{any, proptest};

    #[test]
    fn rejects_bad_headers_with_offsets() {
        assert!(parse_idx(&[1, 0, 8, 1]).unwrap_err().contains("offset 0"));
        assert!(parse_idx(&[0, 0, 9, 1]).unwrap_err().contains("offset 2"));
        assert!(parse_idx(&[0, 0, 8, 1, 0, 0, 0, 3, 1, 2]).unwrap_err().contains("3 bytes of data, file has 2"));
        assert_eq!(parse_idx(&[0, 0, 8, 1, 0, 0, 0, 2, 7, 9]).unwrap(), (vec![2], vec![7, 9]));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_idx(&bytes);
        }
    }
}
