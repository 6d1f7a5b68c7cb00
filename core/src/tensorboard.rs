//! TensorBoard event files, written without TensorFlow.
//!
//! An event file (`events.out.tfevents.<unix time>.<host>`) is a sequence of TFRecords:
//! `u64 length`, masked CRC32C of the length bytes, the payload, masked CRC32C of the payload
//! (all little-endian). Each payload is an `Event` protocol buffer; the first one carries
//! `file_version = "brain.Event:2"`. Scalars go in `Summary.Value.simple_value` and images in
//! `Summary.Value.image` (PNG bytes), which TensorBoard's Scalars and Images dashboards read.
//! Field numbers follow tensorflow/core/util/event.proto and
//! tensorflow/core/framework/summary.proto; the record framing follows
//! tensorflow/core/lib/io/record_writer.cc and the masking tensorflow/core/lib/hash/crc32c.h.
//!
//! Every event is written with one `write` call straight to the file, so a crash loses at
//! most the event being written, and a reader ignores a truncated last record.
use crate::error::{CoreError, Result};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The Castagnoli polynomial, bit-reversed.
const CRC32C_POLY: u32 = 0x82F6_3B78;

const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ CRC32C_POLY } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32C (Castagnoli) of `data`, as iSCSI and TFRecord use it.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc = CRC32C_TABLE[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// The masked CRC32C TFRecord stores: rotated and offset so that a CRC of data that itself
/// holds CRCs stays well distributed.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: length, its masked CRC, the payload, the payload's masked CRC.
pub fn tfrecord(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&masked_crc32c(payload).to_le_bytes());
    out
}

/// Protocol buffer wire format: just what `Event` and `Summary` need.
mod pb {
    const VARINT: u64 = 0;
    const FIXED64: u64 = 1;
    const LEN: u64 = 2;
    const FIXED32: u64 = 5;

    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn key(out: &mut Vec<u8>, field: u64, wire: u64) {
        varint(out, (field << 3) | wire);
    }
    pub fn uint(out: &mut Vec<u8>, field: u64, v: u64) {
        key(out, field, VARINT);
        varint(out, v);
    }
    pub fn double(out: &mut Vec<u8>, field: u64, v: f64) {
        key(out, field, FIXED64);
        out.extend_from_slice(&v.to_le_bytes());
    }
    pub fn float(out: &mut Vec<u8>, field: u64, v: f32) {
        key(out, field, FIXED32);
        out.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bytes(out: &mut Vec<u8>, field: u64, v: &[u8]) {
        key(out, field, LEN);
        varint(out, v.len() as u64);
        out.extend_from_slice(v);
    }
}

/// What a summary value holds.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Scalar(f64),
    Image { png: &'a [u8], info: PngInfo },
}

/// Width, height and channel count read from a PNG's IHDR chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PngInfo {
    pub width: u32,
    pub height: u32,
    /// 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA); TensorBoard's `colorspace`.
    pub channels: u32,
}

/// The size and channel count of a PNG, from its header; `None` if `png` is not a PNG.
pub fn png_info(png: &[u8]) -> Option<PngInfo> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if png.len() < 26 || &png[..8] != SIGNATURE || &png[12..16] != b"IHDR" {
        return None;
    }
    let be = |i: usize| u32::from_be_bytes([png[i], png[i + 1], png[i + 2], png[i + 3]]);
    let channels = match png[25] {
        0 => 1,
        4 => 2,
        2 | 3 => 3,
        6 => 4,
        _ => return None,
    };
    Some(PngInfo { width: be(16), height: be(20), channels })
}

fn summary_value(tag: &str, value: Value<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    pb::bytes(&mut v, 1, tag.as_bytes());
    match value {
        Value::Scalar(x) => pb::float(&mut v, 2, x as f32),
        Value::Image { png, info } => {
            let mut img = Vec::with_capacity(png.len() + 16);
            pb::uint(&mut img, 1, info.height as u64);
            pb::uint(&mut img, 2, info.width as u64);
            pb::uint(&mut img, 3, info.channels as u64);
            pb::bytes(&mut img, 4, png);
            pb::bytes(&mut v, 4, &img);
        }
    }
    v
}

/// What an event carries besides its time and step.
enum Payload<'a> {
    FileVersion,
    /// A `SessionLog` with status START: TensorBoard then drops earlier events at or after
    /// this step (those written after the checkpoint a resumed run starts from).
    SessionStart,
    Summary(&'a [(&'a str, Value<'a>)]),
}

fn event(wall_time: f64, step: u64, payload: Payload<'_>) -> Vec<u8> {
    let mut e = Vec::new();
    pb::double(&mut e, 1, wall_time);
    pb::uint(&mut e, 2, step);
    match payload {
        Payload::FileVersion => pb::bytes(&mut e, 3, b"brain.Event:2"),
        Payload::SessionStart => {
            let mut log = Vec::new();
            pb::uint(&mut log, 1, 1);
            pb::bytes(&mut e, 7, &log);
        }
        Payload::Summary(values) => {
            let mut s = Vec::new();
            for (tag, v) in values {
                pb::bytes(&mut s, 1, &summary_value(tag, *v));
            }
            pb::bytes(&mut e, 5, &s);
        }
    }
    e
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// This machine's name for the event file name, reduced to characters safe in a file name.
fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_default();
    let clean: String =
        raw.trim().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect();
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean
    }
}

/// Appends events to one new event file in a log directory.
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    file: File,
}

impl EventWriter {
    /// Create `dir` if needed and a new event file in it (never an existing one: a second
    /// writer in the same second gets a numbered suffix), starting with the file version.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| CoreError::io(dir, e))?;
        let base = format!("events.out.tfevents.{}.{}", now() as u64, hostname());
        let mut n = 0;
        let (path, file) = loop {
            let name = if n == 0 { base.clone() } else { format!("{base}.{n}") };
            let path = dir.join(name);
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => break (path, f),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(CoreError::io(&path, e)),
            }
        };
        let mut w = EventWriter { path, file };
        w.write_event(&event(now(), 0, Payload::FileVersion))?;
        Ok(w)
    }

    /// The event file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_event(&mut self, payload: &[u8]) -> Result<()> {
        self.file.write_all(&tfrecord(payload)).map_err(|e| CoreError::io(&self.path, e))
    }

    /// Scalars for one step, in one event (TensorBoard stores them as f32).
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        let values: Vec<(&str, Value<'_>)> = values.iter().map(|(t, v)| (*t, Value::Scalar(*v))).collect();
        self.write_event(&event(now(), step, Payload::Summary(&values)))
    }

    /// A PNG image under `tag` at `step`; its size and channels come from its header.
    pub fn png(&mut self, tag: &str, step: u64, png: &[u8]) -> Result<()> {
        let info = png_info(png).ok_or_else(|| {
            CoreError::Other(format!("TensorBoard image `{tag}` at step {step}: the data is not a PNG"))
        })?;
        self.write_event(&event(now(), step, Payload::Summary(&[(tag, Value::Image { png, info })])))
    }

    /// Mark a (re)start at `step`: TensorBoard discards events at or after `step` that
    /// earlier files of this log directory hold.
    pub fn session_start(&mut self, step: u64) -> Result<()> {
        self.write_event(&event(now(), step, Payload::SessionStart))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values from TensorBoard's own implementation:
    /// `from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import crc32c, masked_crc32c`
    /// applied to the same inputs. `crc32c(b"123456789") = 0xe3069283` is also the standard
    /// CRC-32C check value, and 32 zero bytes give 0x8a9136aa (RFC 3720, B.4).
    #[test]
    fn crc32c_and_its_mask_match_known_values() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        assert_eq!(crc32c(b""), 0);
        assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
        assert_eq!(masked_crc32c(b""), 0xa282_ead8);
    }

    #[test]
    fn a_record_frames_its_payload() {
        let r = tfrecord(b"abc");
        assert_eq!(r.len(), 8 + 4 + 3 + 4);
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        assert_eq!(&r[8..12], &masked_crc32c(&3u64.to_le_bytes()).to_le_bytes());
        assert_eq!(&r[12..15], b"abc");
        assert_eq!(&r[15..], &masked_crc32c(b"abc").to_le_bytes());
    }

    #[test]
    fn png_headers_give_size_and_channels() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend_from_slice(&300u32.to_be_bytes());
        png.extend_from_slice(&20u32.to_be_bytes());
        png.extend_from_slice(&[8, 2]);
        assert_eq!(png_info(&png), Some(PngInfo { width: 300, height: 20, channels: 3 }));
        png[25] = 0;
        assert_eq!(png_info(&png).map(|i| i.channels), Some(1));
        assert_eq!(png_info(b"GIF89a not a png at all, no"), None);
    }
}
