//! The example tasks through the sandbox agree with the same code run natively.

use std::sync::Arc;

use mayfly_core::host::{BytesInput, FileInput, InputSource, Limits};
use mayfly_tests::{run, run_bytes, sample_text, scratch};

fn native_wordcount(text: &[u8]) -> Vec<u8> {
    let counts = wordcount::count_words(text, 0).unwrap();
    let mut out = Vec::new();
    wordcount::write_counts(&counts, &mut out).unwrap();
    out
}

#[test]
fn wordcount_in_the_sandbox_equals_native() {
    // 3 MiB: many 256 KiB input chunks, words and characters across boundaries.
    let text = sample_text(7, 3 << 20);
    let dir = scratch("wc-native");
    let outcome = run_bytes("tasks/wordcount", "sample.txt", text.as_bytes(), "{}", &dir);
    assert_eq!(outcome.result, Ok(()), "logs: {:?}", outcome.logs);
    assert_eq!(outcome.outputs.len(), 1);
    assert_eq!(outcome.outputs[0].name, "counts.tsv");
    let got = std::fs::read(&outcome.outputs[0].path).unwrap();
    assert_eq!(got, native_wordcount(text.as_bytes()));
    assert_eq!(outcome.input_read, text.len() as u64);
    // Spot-check the format itself, not only agreement with native code.
    let first = String::from_utf8(got).unwrap().lines().next().unwrap().to_owned();
    let (word, count) = first.split_once('\t').unwrap();
    assert!(!word.is_empty() && count.parse::<u64>().unwrap() > 0, "{first}");
}

#[test]
fn wordcount_reduce_merges_map_outputs() {
    let a = sample_text(1, 200_000);
    let b = sample_text(2, 300_000);
    let (ca, cb) = (native_wordcount(a.as_bytes()), native_wordcount(b.as_bytes()));
    let dir = scratch("wc-reduce");
    let parts: Vec<Arc<dyn InputSource>> =
        vec![Arc::new(BytesInput::new("a/counts.tsv", ca)), Arc::new(BytesInput::new("b/counts.tsv", cb))];
    let input = Arc::new(mayfly_core::host::ConcatInput::new("map outputs", parts));
    let outcome = run("tasks/wordcount", input, r#"{"mode":"reduce"}"#, Limits::default(), &dir);
    assert_eq!(outcome.result, Ok(()));
    let merged = std::fs::read(&outcome.outputs[0].path).unwrap();
    assert_eq!(merged, native_wordcount(format!("{a}\n{b}").as_bytes()));
}

#[test]
fn wordcount_rejects_invalid_utf8_naming_the_offset_in_the_object() {
    let dir = scratch("wc-utf8");
    let mut data = b"fine words here\n".repeat(10);
    data.extend_from_slice(b"bad \xc3\x28 byte");
    let path = dir.join("input.txt");
    std::fs::write(&path, &data).unwrap();
    // Read as a range starting at 16, so the offset must be counted in the object.
    let input = Arc::new(FileInput::range(&path, "input.txt", 16, data.len() as u64 - 16).unwrap());
    let outcome = run("tasks/wordcount", input, "{}", Limits::default(), &dir.join("staging"));
    let failure = outcome.result.unwrap_err();
    assert!(!failure.is_retryable());
    let text = failure.to_string();
    assert!(text.contains("input.txt: input is not valid UTF-8 at byte offset 164"), "{text}");
    assert!(outcome.outputs.is_empty());
    assert!(!dir.join("staging").exists(), "a failed attempt leaves no staging behind");
}

#[test]
fn wordcount_rejects_unknown_parameters() {
    let dir = scratch("wc-params");
    let outcome = run_bytes("tasks/wordcount", "x", b"a b", r#"{"mode":"shuffle"}"#, &dir);
    let text = outcome.result.unwrap_err().to_string();
    assert!(text.contains("invalid task parameters") && text.contains("shuffle"), "{text}");
}

#[test]
fn grep_prints_file_line_and_text() {
    let dir = scratch("grep");
    let text = "alpha\nmayfly one\nbeta\nMayfly two\n";
    let outcome = run_bytes("tasks/grep", "notes.txt", text.as_bytes(), r#"{"pattern":"(?i)mayfly"}"#, &dir);
    assert_eq!(outcome.result, Ok(()));
    let got = std::fs::read_to_string(&outcome.outputs[0].path).unwrap();
    assert_eq!(got, "notes.txt:2:mayfly one\nnotes.txt:4:Mayfly two\n");
}

#[test]
fn grep_refuses_an_invalid_pattern_without_retry() {
    let dir = scratch("grep-bad");
    let outcome = run_bytes("tasks/grep", "n", b"x", r#"{"pattern":"(unclosed"}"#, &dir);
    let failure = outcome.result.unwrap_err();
    assert!(!failure.is_retryable());
    assert!(failure.to_string().contains("invalid pattern \"(unclosed\""), "{failure}");
}

#[test]
fn sha256_matches_native_digest() {
    let dir = scratch("sha");
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let outcome = run_bytes("tasks/sha256", "blob.bin", &data, "{}", &dir);
    assert_eq!(outcome.result, Ok(()));
    let got = std::fs::read_to_string(&outcome.outputs[0].path).unwrap();
    let want = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data));
    assert_eq!(got, format!("{want}\tblob.bin\n"));
}

#[test]
fn input_ranges_reads_and_seeks_are_exact() {
    let dir = scratch("echo");
    let data: Vec<u8> = (0..1_000_003u32).map(|i| (i % 253) as u8).collect();
    let path = dir.join("data.bin");
    std::fs::write(&path, &data).unwrap();
    let input = Arc::new(FileInput::range(&path, "data.bin", 1000, 700_000).unwrap());
    let outcome = run("tests/guests/misbehave", input, r#"{"mode":"echo"}"#, Limits::default(), &dir.join("s"));
    assert_eq!(outcome.result, Ok(()));
    let by_name = |n: &str| outcome.outputs.iter().find(|o| o.name == n).unwrap().path.clone();
    assert_eq!(std::fs::read(by_name("copy.bin")).unwrap(), &data[1000..701_000]);
    assert_eq!(std::fs::read(by_name("tail.bin")).unwrap(), &data[700_996..701_000]);
    // stderr became a log line.
    assert!(outcome.logs.iter().any(|l| l.message == "echoed 700000 bytes"), "{:?}", outcome.logs);
}

#[test]
fn each_item_gets_a_fresh_instance_of_one_loaded_task() {
    let dir = scratch("many");
    for i in 0..50 {
        let text = format!("item{i} word word");
        let outcome =
            run_bytes("tasks/wordcount", &format!("{i}.txt"), text.as_bytes(), "{}", &dir.join(i.to_string()));
        assert_eq!(outcome.result, Ok(()));
        let got = std::fs::read_to_string(&outcome.outputs[0].path).unwrap();
        assert_eq!(got, format!("word\t2\nitem{i}\t1\n"));
    }
}
