//! `grep`: the lines of the input that match a regular expression.
//!
//! Parameters: `pattern` (required, Rust `regex` syntax) and `ignore_case`
//! (default false). The output `matches.txt` has one `file:line_number:line`
//! line per match, where `file` is the input's name and line numbers start at 1.
//! Lines are matched as bytes, so input need not be UTF-8. There is one
//! `matches.txt` per shard, with the matches of its items in the shard's order
//! (the pattern is compiled once per shard).
//!
//! Line numbers count from the start of the item: run grep with splitting off
//! (the default for jobs that do not ask for it) to get the object's line numbers.

use std::io::{self, BufRead, Write};

use mayfly_sdk::{Error, Input, Output, Outputs, Result, Shard, Task, info, task};
use regex::bytes::{Regex, RegexBuilder};
use serde::Deserialize;

/// The task's parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The regular expression to look for.
    pub pattern: String,
    /// Match without regard to case.
    #[serde(default)]
    pub ignore_case: bool,
}

/// The name of the output file.
pub const OUTPUT: &str = "matches.txt";

/// Compiles the pattern, with an error that names it.
pub fn compile(params: &Params) -> Result<Regex> {
    RegexBuilder::new(&params.pattern)
        .case_insensitive(params.ignore_case)
        .build()
        .map_err(|e| Error::fatal(format!("invalid pattern {:?}: {e}", params.pattern)))
}

/// Writes every matching line of `reader` as `name:line_number:line`; returns
/// how many lines matched.
pub fn grep(re: &Regex, name: &str, mut reader: impl BufRead, out: &mut impl Write) -> io::Result<u64> {
    let mut line = Vec::new();
    let mut number = 0u64;
    let mut hits = 0u64;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(hits);
        }
        number += 1;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if re.is_match(text) {
            hits += 1;
            write!(out, "{name}:{number}:")?;
            out.write_all(text)?;
            out.write_all(b"\n")?;
        }
    }
}

/// The task's state for one shard: the pattern, and the shard's output.
#[derive(Debug)]
pub struct Grep {
    re: Regex,
    out: Output,
    hits: u64,
}

#[task]
impl Task for Grep {
    type Params = Params;

    fn start(_shard: &Shard, params: Params, outputs: &mut Outputs) -> Result<Self> {
        Ok(Grep { re: compile(&params)?, out: outputs.create(OUTPUT)?, hits: 0 })
    }

    fn item(&mut self, input: &mut Input, _outputs: &mut Outputs) -> Result<()> {
        let name = input.name().to_owned();
        self.hits += grep(&self.re, &name, input, &mut self.out)?;
        Ok(())
    }

    fn finish(self, _outputs: &mut Outputs) -> Result<()> {
        self.out.finish()?;
        info!(matches = self.hits; "searched the shard");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_grep(pattern: &str, ignore_case: bool, text: &[u8]) -> String {
        let re = compile(&Params { pattern: pattern.into(), ignore_case }).expect("valid");
        let mut out = Vec::new();
        grep(&re, "f.txt", text, &mut out).expect("grep");
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn prints_file_line_number_and_line() {
        let text = b"alpha\nbeta\r\ngamma beta\nno newline beta";
        assert_eq!(run_grep("beta", false, text), "f.txt:2:beta\nf.txt:3:gamma beta\nf.txt:4:no newline beta\n");
    }

    #[test]
    fn ignore_case_and_anchors() {
        assert_eq!(run_grep("^BETA$", true, b"beta\nbetas\n"), "f.txt:1:beta\n");
    }

    #[test]
    fn non_utf8_lines_are_searched_as_bytes() {
        let re = compile(&Params { pattern: "x".into(), ignore_case: false }).expect("valid");
        let mut out = Vec::new();
        grep(&re, "f", &b"\xffx\nno\n"[..], &mut out).expect("grep");
        assert_eq!(out, b"f:1:\xffx\n");
    }

    #[test]
    fn a_bad_pattern_is_a_fatal_error_naming_it() {
        let err = compile(&Params { pattern: "(".into(), ignore_case: false }).expect_err("invalid");
        assert!(!err.is_retryable());
        assert!(err.message().contains("invalid pattern \"(\""), "{}", err.message());
    }
}
