//! `sha256`: the SHA-256 digest of each input.
//!
//! The output `sha256.tsv` has one line per item, `digest<TAB>name`, with the
//! digest in lowercase hex; there is one per shard, its lines in the shard's
//! order. Run it with splitting off: the digest of a byte range is not the
//! digest of its object.

use std::io::{self, Read, Write};

use mayfly_sdk::{Input, Output, Outputs, Result, Shard, Task, info, task};
use sha2::{Digest, Sha256};

/// The name of the output file.
pub const OUTPUT: &str = "sha256.tsv";

/// The lowercase hex SHA-256 of everything `reader` yields.
pub fn digest(mut reader: impl Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let mut hex = String::with_capacity(64);
    for byte in hasher.finalize() {
        use std::fmt::Write as _;
        let _ = write!(hex, "{byte:02x}");
    }
    Ok(hex)
}

/// The task's state for one shard: the shard's output.
#[derive(Debug)]
pub struct Sha256Task {
    out: Output,
}

#[task]
impl Task for Sha256Task {
    type Params = serde::de::IgnoredAny;

    fn start(_shard: &Shard, _params: Self::Params, outputs: &mut Outputs) -> Result<Self> {
        Ok(Sha256Task { out: outputs.create(OUTPUT)? })
    }

    fn item(&mut self, input: &mut Input, _outputs: &mut Outputs) -> Result<()> {
        let name = input.name().to_owned();
        let hex = digest(input)?;
        writeln!(self.out, "{hex}\t{name}")?;
        info!("{hex}  {name}");
        Ok(())
    }

    fn finish(self, _outputs: &mut Outputs) -> Result<()> {
        Ok(self.out.finish()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        assert_eq!(digest(&b""[..]).expect("read"), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(
            digest(&b"abc"[..]).expect("read"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn digest_spans_many_buffers() {
        let data = vec![b'a'; 1_000_000];
        assert_eq!(
            digest(&data[..]).expect("read"),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
    }
}
