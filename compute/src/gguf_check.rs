//! A bounds-checking walk over a GGUF header, run before candle's parser.
//!
//! candle's `gguf_file::Content::read` trusts the lengths it reads: a damaged file claiming
//! a string of 2^60 bytes makes it try to allocate that much and abort the process, which no
//! `Result` can report. This walk checks every length against the bytes that remain, so a
//! corrupt file becomes an [`Error::InvalidGguf`](crate::Error::InvalidGguf) instead.

const MAGIC: u32 = 0x4655_4747; // "GGUF", little-endian
const MAX_DEPTH: usize = 4;

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// The whole file's length: `bytes` may be a prefix of it, what lengths are checked
    /// against is the file.
    file_len: u64,
    /// Set when a read failed only because `bytes` ends before the file does.
    short: bool,
    /// GGUF version 1 wrote counts and lengths as u32, later versions as u64.
    wide: bool,
}

impl Reader<'_> {
    fn take(&mut self, n: u64, what: &str) -> Result<&[u8], String> {
        let remaining = self.file_len - self.pos as u64;
        if n > remaining {
            return Err(format!("{what} needs {n} bytes at offset {} but only {remaining} remain", self.pos));
        }
        if n > (self.bytes.len() - self.pos) as u64 {
            self.short = true;
            return Err(format!("{what} lies past the {} bytes read", self.bytes.len()));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn len(&mut self, what: &str) -> Result<u64, String> {
        if self.wide { self.u64(what) } else { self.u32(what).map(u64::from) }
    }

    fn string(&mut self, what: &str) -> Result<(), String> {
        let n = self.len(what)?;
        self.take(n, what).map(|_| ())
    }

    fn value(&mut self, ty: u32, depth: usize, key: &str) -> Result<(), String> {
        let fixed = match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => return self.string(&format!("string value of `{key}`")),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(format!("arrays nested deeper than {MAX_DEPTH} in `{key}`"));
                }
                let elem_ty = self.u32(&format!("array type of `{key}`"))?;
                let n = self.len(&format!("array length of `{key}`"))?;
                // Every element takes at least one byte, so a longer array cannot fit.
                let remaining = self.file_len - self.pos as u64;
                if n > remaining {
                    return Err(format!("array `{key}` claims {n} elements but only {remaining} bytes remain"));
                }
                for _ in 0..n {
                    self.value(elem_ty, depth + 1, key)?;
                }
                return Ok(());
            }
            other => return Err(format!("unknown value type {other} for `{key}`")),
        };
        self.take(fixed, &format!("value of `{key}`")).map(|_| ())
    }
}

/// Checks that the header's lengths and counts are consistent with the file's size.
pub(crate) fn check_header(bytes: &[u8]) -> Result<(), String> {
    check_header_prefix(bytes, bytes.len() as u64).map_err(|e| match e {
        HeaderCheck::NeedMore => "the header runs past the end of the file".to_owned(),
        HeaderCheck::Invalid(reason) => reason,
    })
}

/// Why a header check of a file's first bytes failed.
#[derive(Debug)]
pub(crate) enum HeaderCheck {
    /// The header goes on past the bytes given: read more of the file.
    NeedMore,
    /// The header is damaged, whatever follows.
    Invalid(String),
}

/// [`check_header`] on the first bytes of a file of `file_len` bytes.
pub(crate) fn check_header_prefix(bytes: &[u8], file_len: u64) -> Result<(), HeaderCheck> {
    let mut r = Reader { bytes, pos: 0, wide: true, file_len, short: false };
    walk(&mut r).map_err(|reason| if r.short { HeaderCheck::NeedMore } else { HeaderCheck::Invalid(reason) })
}

/// The key whose value every tensor's data offset is rounded up to.
const ALIGNMENT_KEY: &str = "general.alignment";

/// `general.alignment` must be a power of two, as GGUF's specification says: candle's
/// loader divides by it (an alignment of 0 panicked it) and reads only the integer types
/// up to 32 bits, silently using 32 for any other, and llama.cpp refuses anything but a
/// u32 power of two. So does this check, whose message says what is wrong.
fn check_alignment(ty: u32, value: &[u8]) -> Result<(), String> {
    let alignment: i64 = match (ty, value) {
        (0, &[v]) => v.into(),
        (1, &[v]) => (v as i8).into(),
        (2, &[a, b]) => u16::from_le_bytes([a, b]).into(),
        (3, &[a, b]) => i16::from_le_bytes([a, b]).into(),
        (4, &[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]).into(),
        (5, &[a, b, c, d]) => i32::from_le_bytes([a, b, c, d]).into(),
        _ => return Err(format!("`{ALIGNMENT_KEY}` has value type {ty}; it must be an integer (u32)")),
    };
    if alignment <= 0 || alignment & (alignment - 1) != 0 {
        return Err(format!("`{ALIGNMENT_KEY}` is {alignment}; it must be a power of two (GGUF's default is 32)"));
    }
    Ok(())
}

fn walk(r: &mut Reader<'_>) -> Result<(), String> {
    let magic = r.u32("magic")?;
    if magic != MAGIC {
        return Err(format!("bad magic {magic:#010x} (expected {MAGIC:#010x}, \"GGUF\")"));
    }
    let version = r.u32("version")?;
    if !(1..=3).contains(&version) {
        return Err(format!("unsupported GGUF version {version}"));
    }
    r.wide = version >= 2;
    let n_tensors = r.len("tensor count")?;
    let n_kv = r.len("metadata count")?;
    for i in 0..n_kv {
        let key_len = r.len(&format!("key #{i} length"))?;
        let key = String::from_utf8_lossy(r.take(key_len, &format!("key #{i}"))?).into_owned();
        let ty = r.u32(&format!("type of `{key}`"))?;
        let start = r.pos;
        r.value(ty, 0, &key)?;
        if key == ALIGNMENT_KEY {
            check_alignment(ty, &r.bytes[start..r.pos])?;
        }
    }
    for i in 0..n_tensors {
        let name_len = r.len(&format!("tensor #{i} name length"))?;
        let name = String::from_utf8_lossy(r.take(name_len, &format!("tensor #{i} name"))?).into_owned();
        let n_dims = r.u32(&format!("dimension count of `{name}`"))?;
        if n_dims > 4 {
            return Err(format!("tensor `{name}` has {n_dims} dimensions (at most 4)"));
        }
        let mut elems: u64 = 1;
        for _ in 0..n_dims {
            let d = r.len(&format!("dimension of `{name}`"))?;
            elems = elems
                .checked_mul(d)
                .filter(|&e| e <= r.file_len.saturating_mul(2))
                .ok_or_else(|| format!("tensor `{name}` is larger than the file"))?;
        }
        r.u32(&format!("type of `{name}`"))?;
        r.u64(&format!("offset of `{name}`"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_a_huge_string_length_instead_of_allocating() {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes()); // tensors
        b.extend_from_slice(&1u64.to_le_bytes()); // kv
        b.extend_from_slice(&(1u64 << 60).to_le_bytes()); // key length
        let err = check_header(&b).unwrap_err();
        assert!(err.contains("1152921504606846976 bytes"), "{err}");
    }

    /// The first bytes of a file: a header that goes on past them asks for more, a damaged
    /// one is refused at once (not read again and again, up to the whole file).
    #[test]
    fn a_prefix_asks_for_more_only_when_the_header_goes_on() {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes()); // tensors
        b.extend_from_slice(&1u64.to_le_bytes()); // kv
        b.extend_from_slice(&3u64.to_le_bytes()); // key length
        b.extend_from_slice(b"abc");
        b.extend_from_slice(&4u32.to_le_bytes()); // u32 value
        b.extend_from_slice(&7u32.to_le_bytes());
        assert!(check_header_prefix(&b, b.len() as u64).is_ok());
        assert!(matches!(check_header_prefix(&b[..20], 1 << 30), Err(HeaderCheck::NeedMore)));
        assert!(matches!(check_header_prefix(b"GGML\x03\0\0\0", 1 << 30), Err(HeaderCheck::Invalid(_))));
        // A length past the file's end is damage, however little was read.
        let mut huge = b[..24].to_vec();
        huge.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(check_header_prefix(&huge, 1 << 30), Err(HeaderCheck::Invalid(_))));
    }

    #[test]
    fn rejects_bad_magic_and_truncation() {
        assert!(check_header(b"GGML\x03\0\0\0").unwrap_err().contains("bad magic"));
        assert!(check_header(b"GGUF").unwrap_err().contains("version"));
    }
}
