//! The partitioned reduce, end to end on the local provider: R partitions
//! give the bytes of one reducer over several corpora; partitions no key
//! falls in are empty, not errors; `merge = "parts"` keeps the parts; a map
//! output lost or cut short before its partition reads it fails the reduce
//! naming it; a map task that does not partition is refused before launch
//! (and its commits refused when the preflight is off); a partition replays
//! as its worker ran it.

use std::time::Duration;

use mayfly_tests::cluster::{TestJob, text, wait_until};

use crate::cluster::native_counts;

/// A corpus: (name, bytes) of each file.
type Files = Vec<(String, Vec<u8>)>;

/// A wordcount job's extra sections: its reduce with `keys`, and `workers`.
fn reduce_job(keys: &str, workers: u32) -> String {
    format!(
        "[reduce]\npath = {:?}\nparams = {{ mode = \"reduce\" }}\n{keys}\n\n[cluster]\nworkers = {workers}\n\n\
         [sharding]\nshards_per_worker = 3\n",
        mayfly_tests::component("tasks/wordcount").to_string_lossy()
    )
}

fn final_state(job: &TestJob) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(job.state().join("final.json")).unwrap()).unwrap()
}

/// Three corpora: prose of many sizes, many tiny files sharing few words
/// (ties everywhere), and text of every kind of character.
fn corpora() -> Vec<(&'static str, Files)> {
    let prose = (0..9)
        .map(|i| {
            (format!("d{}/t{i}.txt", i % 3), mayfly_tests::sample_text(i, 15_000 + 9_000 * i as usize).into_bytes())
        })
        .collect();
    let tiny = (0..120)
        .map(|i| (format!("t/{i:03}.txt"), format!("w{} w{} common x{}\n", i % 5, i % 11, i % 40).into_bytes()))
        .collect();
    let unicode = (0..6)
        .map(|i| {
            let text = format!("été\u{a0}東京 {i} Ωmega\u{3000}naïve ÉTÉ été 東京\tz{}\n", i % 2).repeat(50 + i * 30);
            (format!("u/{i}.txt"), text.into_bytes())
        })
        .collect();
    vec![("prose", prose), ("tiny", tiny), ("unicode", unicode)]
}

#[test]
fn any_number_of_partitions_gives_the_bytes_of_one_reducer() {
    for (name, files) in corpora() {
        let want = native_counts(&files);
        let rs: &[u32] = if name == "prose" { &[1, 2, 3, 4] } else { &[2, 5] };
        for &r in rs {
            let job = TestJob::new(&format!("part-{name}-{r}"), &files);
            job.write_job(
                "tasks/wordcount",
                "{ mode = \"map\" }",
                &reduce_job(&format!("partitions = {r}\norder = \"2nr,1\""), 2),
            );
            let out = job.run();
            let said = text(&out);
            assert!(out.status.success(), "{name}, R = {r}: {said}");
            assert!(said.contains(&format!("reduce: {r} of {r} partition")), "{said}");
            let got = std::fs::read(job.out().join("reduce/counts.tsv")).unwrap();
            assert!(
                got == want,
                "{name}, R = {r}: the merged reduce differs from one reducer's ({} vs {} bytes)",
                got.len(),
                want.len()
            );
            // The map split its tables by word (with R > 1), and the parts were
            // merged away.
            let tables = job.map_outputs();
            if r > 1 {
                assert!(tables.iter().all(|t| t.contains("/part-0000") && t.ends_with("/counts.tsv")), "{tables:?}");
            } else {
                assert!(tables.iter().all(|t| t.ends_with("/counts.tsv") && !t.contains("part-")), "{tables:?}");
            }
            // The master deletes the merged parts once the end is recorded.
            job.assert_nothing_left(Duration::from_secs(10));
            let left: Vec<_> =
                std::fs::read_dir(job.out().join("reduce")).unwrap().flatten().map(|e| e.file_name()).collect();
            assert_eq!(left, ["counts.tsv"], "{name}, R = {r}");
            let fin = final_state(&job);
            assert_eq!(fin["reduce"]["committed"], r, "{fin}");
            let manifest: serde_json::Value =
                serde_json::from_slice(&std::fs::read(job.out().join("_manifest.json")).unwrap()).unwrap();
            assert_eq!(manifest["complete"], true);
            assert_eq!(manifest["reduce_outputs"], serde_json::json!(["reduce/counts.tsv"]), "{manifest}");
            job.assert_nothing_left(Duration::from_secs(10));
        }
    }
}

#[test]
fn more_partitions_than_words_leaves_some_empty_and_parts_can_stay_parts() {
    let files: Vec<(String, Vec<u8>)> =
        (0..4).map(|i| (format!("{i}.txt"), b"to be or not to be\n".to_vec())).collect();
    let job = TestJob::new("part-empty", &files);
    job.write_job("tasks/wordcount", "{ mode = \"map\" }", &reduce_job("partitions = 16\norder = \"2nr,1\"", 2));
    let out = job.run();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(job.out().join("reduce/counts.tsv")).unwrap(), b"be\t8\nto\t8\nnot\t4\nor\t4\n");
    assert_eq!(final_state(&job)["reduce"]["committed"], 16);
    job.assert_nothing_left(Duration::from_secs(10));

    // merge = "parts": each partition's file stays, and together they hold the counts.
    let job = TestJob::new("part-parts", &files);
    job.write_job("tasks/wordcount", "{ mode = \"map\" }", &reduce_job("partitions = 3\nmerge = \"parts\"", 2));
    let out = job.run();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!job.out().join("reduce/counts.tsv").exists());
    let mut lines = Vec::new();
    for p in 0..3 {
        let part = std::fs::read_to_string(job.out().join(format!("reduce/part-0000{p}/counts.tsv"))).unwrap();
        for line in part.lines() {
            let word = line.split('\t').next().unwrap();
            assert_eq!(mayfly_sdk::partition(word.as_bytes(), 3), p, "{word} is in part {p}");
            lines.push(line.to_owned());
        }
    }
    lines.sort();
    assert_eq!(lines, ["be\t8", "not\t4", "or\t4", "to\t8"]);
    job.assert_nothing_left(Duration::from_secs(10));

    // A partition replays as its worker ran it: the same bytes; one past the
    // last is no shard.
    let manifest: mayfly_core::job::Manifest = mayfly_core::job::read_json(&job.state().join("manifest.json")).unwrap();
    let map_shards = manifest.plan.shards.len() as u32;
    let shard = (map_shards + 1).to_string();
    let out = job.command(&["replay", "part-parts", &shard, "--state", "state", "--out", "replayed"]).output().unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains(&format!("replaying reduce partition 1 (shard {shard})")), "{said}");
    let replayed = std::fs::read(job.dir.join("replayed/%2Freduce%2Fpart-00001/counts.tsv")).unwrap();
    assert_eq!(replayed, std::fs::read(job.out().join("reduce/part-00001/counts.tsv")).unwrap());
    let past = (map_shards + 3).to_string();
    let out = job.command(&["replay", "part-parts", &past, "--state", "state"]).output().unwrap();
    assert!(text(&out).contains(&format!("has {} shards", map_shards + 3)), "{}", text(&out));
}

/// Shard 0's map output is taken away (or cut short) while shard 1 still
/// maps: the partition that reads it fails, naming it, and the job says the
/// reduce failed.
#[test]
fn a_map_output_lost_before_its_partition_reads_it_fails_the_reduce_naming_it() {
    for (id, harm, says) in
        [("part-lost", "delete", "is missing"), ("part-cut", "truncate", "is not the 4000 bytes committed")]
    {
        let files: Vec<(String, Vec<u8>)> =
            vec![("a.txt".into(), vec![b'a'; 4000]), ("b.txt".into(), vec![b'b'; 4000])];
        let job = TestJob::new(id, &files);
        job.write_job(
            "tests/guests/misbehave",
            "{ mode = \"slow\", delay_ms = 1500 }",
            &format!(
                "[reduce]\npath = {:?}\nparams = {{ mode = \"echo\" }}\n\n[cluster]\nworkers = 1\n\n[sharding]\nshards_per_worker = 2\nsplit_text = false\nmin_shard_bytes = 0\n\n[limits]\nmax_attempts = 2\n",
                mayfly_tests::component("tests/guests/misbehave").to_string_lossy()
            ),
        );
        let child = job
            .command(&["run", "job.toml", "--no-preflight"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let first = job.out().join("map/a.txt/copy.bin");
        assert!(wait_until(Duration::from_secs(60), || first.exists()), "shard 0 never committed");
        match harm {
            "delete" => std::fs::remove_file(&first).unwrap(),
            _ => std::fs::write(&first, b"short").unwrap(),
        }
        let out = child.wait_with_output().unwrap();
        let said = text(&out);
        assert!(!out.status.success(), "{said}");
        let error = final_state(&job)["reduce_error"].as_str().unwrap_or_default().to_owned();
        assert!(
            error.contains("reduce partition 0: map output")
                && error.contains("map/a.txt/copy.bin")
                && error.contains(says),
            "{error}\n{said}"
        );
        assert!(said.contains("the reduce failed: reduce partition 0: map output"), "{said}");
        assert!(!job.out().join("reduce/copy.bin").exists(), "nothing was published from a broken input");
        job.assert_nothing_left(Duration::from_secs(10));
    }
}

/// A job of several partitions whose map task writes plain outputs: its
/// preflight refuses it before anything is launched; without the preflight,
/// the master refuses each commit, naming the output.
#[test]
fn a_map_task_that_does_not_partition_is_refused() {
    let files: Vec<(String, Vec<u8>)> = (0..3).map(|i| (format!("{i}.txt"), b"x y\n".to_vec())).collect();
    let job = TestJob::new("part-refused", &files);
    let reduce = mayfly_tests::component("tests/guests/misbehave").to_string_lossy().into_owned();
    job.write_job(
        "tests/guests/misbehave",
        "{ mode = \"echo\" }",
        &format!("[reduce]\npath = {reduce:?}\nparams = {{ mode = \"echo\" }}\npartitions = 2\nmerge = \"concat\"\n"),
    );
    let out = job.run();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("\"copy.bin\", which is not partitioned") && said.contains("partitions = 2"), "{said}");
    assert!(!job.state().exists() || !job.state().join("master.json").exists(), "nothing was launched");

    job.assert_nothing_left(Duration::from_secs(10));
    let job = TestJob::new("part-refused-late", &files);
    job.write_job(
        "tests/guests/misbehave",
        "{ mode = \"echo\" }",
        &format!("[reduce]\npath = {reduce:?}\nparams = {{ mode = \"echo\" }}\npartitions = 2\nmerge = \"concat\"\n"),
    );
    let out = job.command(&["run", "job.toml", "--no-preflight"]).output().unwrap();
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("map output \"copy.bin\" of ")
            && said.contains(".txt is not partitioned ([reduce] partitions = 2"),
        "{said}"
    );
    job.assert_nothing_left(Duration::from_secs(10));
}
