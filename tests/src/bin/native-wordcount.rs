//! The comparison benchmark's native baseline: the `wordcount` task's own code
//! compiled natively, run as a plain program (no sandbox, no framework).
//!
//! `native-wordcount map DIR FILE...` counts the words of every FILE into one
//! table, written to a new file in DIR; `native-wordcount reduce OUT DIR` sums
//! every table in DIR into OUT. Tables are in the task's `counts.tsv` format.

use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use wordcount::{Counts, count_words_into, merge_counts, write_counts};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.split_first() {
        Some((mode, rest)) if mode == "map" && !rest.is_empty() => map(Path::new(&rest[0]), &rest[1..]),
        Some((mode, [out, dir])) if mode == "reduce" => reduce(Path::new(out), Path::new(dir)),
        _ => Err("usage: native-wordcount map DIR FILE... | native-wordcount reduce OUT DIR".to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("native-wordcount: {e}");
            ExitCode::FAILURE
        }
    }
}

fn map(dir: &Path, files: &[String]) -> Result<(), String> {
    let mut counts = Counts::default();
    for file in files {
        let f = std::fs::File::open(file).map_err(|e| format!("{file}: {e}"))?;
        count_words_into(&mut counts, f, 0).map_err(|e| format!("{file}: {e:?}"))?;
    }
    // A name no other process of the run has taken (a pid may be reused).
    for n in 0.. {
        let path = dir.join(format!("part-{}-{n}.tsv", std::process::id()));
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(_) => return write_atomically(&path, &counts),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    unreachable!("an unbounded range")
}

fn reduce(out: &Path, dir: &Path) -> Result<(), String> {
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "tsv"))
        .collect();
    parts.sort();
    let mut chain: Box<dyn Read> = Box::new(std::io::empty());
    for p in parts {
        let f = std::fs::File::open(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        chain = Box::new(chain.chain(f));
    }
    let counts = merge_counts(BufReader::with_capacity(1 << 20, chain)).map_err(|e| format!("{e:?}"))?;
    write_atomically(out, &counts)
}

fn write_atomically(path: &Path, counts: &Counts) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?);
    write_counts(counts, &mut w).and_then(|_| w.flush()).map_err(|e| format!("{}: {e}", tmp.display()))?;
    drop(w);
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}
