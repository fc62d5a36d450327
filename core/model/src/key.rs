//! # Object keys
//!
//! An input's key comes from a store's listing, names the input everywhere
//! after (the plan, the journal, `map/<key>/...` in the output) and is read
//! back by that name. Two rules keep a key from becoming something else:
//! - [`check`], at listing: a key the stores read back by the same name and
//!   that stays inside any directory it is joined to: no empty, `.` or `..`
//!   segment, no leading or trailing `/`, no control character (S3 and Azure
//!   take such keys, `object_store` cannot name them, a file system would
//!   climb out or strip them);
//! - [`file_name`], wherever a key becomes the name of one local file or
//!   directory (a node's attempt staging, a held node's `held/`, `replay`'s
//!   directories): one path component that cannot climb out, never starts with
//!   `.` (mayfly's own temporary files do), and differs from every other key's
//!   even on a disk that ignores case.
//!
//! It imports nothing of mayfly.

use std::fmt::Write as _;

use sha2::Digest as _;

/// A key the stores cannot read back by its name, or that would climb out of
/// a directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the key {key:?} {reason}")]
pub struct KeyError {
    /// The key, as listed.
    pub key: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Whether `key` is one mayfly can name: see the module's doc.
pub fn check(key: &str) -> Result<(), KeyError> {
    let refuse = |reason| Err(KeyError { key: key.to_owned(), reason });
    if key.is_empty() {
        return refuse("is empty");
    }
    if key.starts_with('/') {
        return refuse("starts with `/` (stores strip it, so it cannot be read back by its name)");
    }
    if key.ends_with('/') {
        return refuse("ends with `/` (a folder's placeholder, not an object mayfly can read back)");
    }
    if key.chars().any(char::is_control) {
        return refuse("holds a control character");
    }
    for segment in key.split('/') {
        match segment {
            "" => return refuse("holds an empty segment (`//`)"),
            "." | ".." => return refuse("holds a `.` or `..` segment (as a path it would leave its directory)"),
            _ => {}
        }
    }
    Ok(())
}

/// The longest [`file_name`] (a common file system's limit).
const MAX_NAME: usize = 255;

/// `key` as the name of one local file or directory: lower-case ASCII letters,
/// digits and `_-#=,+@` as they are, `.` too but at the start; every other
/// byte (`/`, `%`, upper-case letters, anything not ASCII) as `%XX` (upper-case
/// hex). So a name never holds `/`, never starts with `.`, and two keys that
/// differ (in case too) have names that differ even ignoring case. A name
/// that would be longer than 255 bytes is cut, and its key's SHA-256 follows
/// a `~` (which no uncut name holds).
pub fn file_name(key: &str) -> String {
    let mut name = String::with_capacity(key.len());
    for (i, b) in key.bytes().enumerate() {
        let plain = matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'#' | b'=' | b',' | b'+' | b'@')
            || (b == b'.' && i > 0);
        if plain {
            name.push(char::from(b));
        } else {
            let _ = write!(name, "%{b:02X}");
        }
    }
    if name.len() <= MAX_NAME {
        return name;
    }
    // Cut at 190 bytes, not inside an escape, and name the whole key by its digest.
    let mut cut = 190;
    if let Some(escape) = name[cut - 2..cut].find('%') {
        cut = cut - 2 + escape;
    }
    name.truncate(cut);
    name.push('~');
    for b in sha2::Sha256::digest(key.as_bytes()) {
        let _ = write!(name, "{b:02x}");
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_the_stores_read_back_pass_and_the_others_are_named() {
        for key in ["a.txt", "A.txt", "x/100% a.txt", "f.txt#0-756", "dir/é.txt", "a..b", ".hidden/x"] {
            assert_eq!(check(key), Ok(()), "{key}");
        }
        for (key, why) in [
            ("", "is empty"),
            ("/abs", "starts with `/`"),
            ("a/", "ends with `/`"),
            ("a//b", "empty segment"),
            ("a/./b", "`.` or `..` segment"),
            ("a/../../x", "`.` or `..` segment"),
            ("..", "`.` or `..` segment"),
            ("a\u{1}b", "control character"),
            ("a\nb", "control character"),
        ] {
            let e = check(key).unwrap_err();
            assert!(e.to_string().contains(why) && e.to_string().contains(&format!("{key:?}")), "{key:?}: {e}");
        }
    }

    #[test]
    fn a_keys_file_name_is_one_component_that_never_climbs_and_never_meets_another_ignoring_case() {
        let long = "d/".repeat(200) + "x.txt";
        let keys = [
            "a.txt",
            "A.txt",
            "a/b.txt",
            "a%2Fb.txt",
            "../../etc/passwd",
            "/abs",
            ".hidden",
            "a\u{1}b",
            "é.txt",
            "É.txt",
            "f.txt#0-756",
            "_shards/000001",
            long.as_str(),
            &(long.clone() + "y"),
        ];
        let mut seen = std::collections::HashSet::new();
        for key in keys {
            let name = file_name(key);
            assert!(!name.is_empty() && name.len() <= MAX_NAME, "{key:?}: {name}");
            assert!(!name.contains('/') && !name.starts_with('.') && name != "..", "{key:?}: {name}");
            assert!(seen.insert(name.to_lowercase()), "{key:?}: {name} meets another key's name ignoring case");
        }
        assert_eq!(file_name("a.txt"), "a.txt");
        assert_eq!(file_name("A.txt"), "%41.txt");
        assert_eq!(file_name("_shards/000001"), "_shards%2F000001");
    }
}
