//! The truth about what is committed: for each shard, the one attempt (its
//! token) whose commit won, and that commit's outputs.
//!
//! Where the job's output is a local directory, the master appends commits to
//! one log, `_mayfly/commits.log` ([`CommitLog`]): one write and one
//! `fdatasync` per batch of commits, the winner of each shard decided in
//! memory. Where the output is an object store, the store is the arbiter: one
//! marker object per shard under `_mayfly/markers/`, created only if absent
//! (in batches). [`read`] gives both to every reader: a restarted master, a
//! worker checking an unanswered commit, `mayfly replay`, the tests' audit.
//!
//! The log is lines of `<crc32 of the JSON, 8 hex digits> <a Marker as
//! JSON>\n`. A batch is written at the end of the file and made durable
//! before any of its commits is answered or published, so after a crash only
//! the last, unanswered batch can be incomplete: a line that is cut short, or
//! does not match its checksum, ends what is read (as a database's log ends
//! at its first bad record), and a restarted master cuts it off
//! ([`recover_log`]).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::job::Layout;
use crate::ledger::{CommittedOutput, Quarantined};

/// A shard's commit: which attempt committed it, and what it committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    /// The job.
    pub job: String,
    /// The shard.
    pub shard: u32,
    /// The token that committed it.
    pub token: u64,
    /// Its outputs.
    pub outputs: Vec<CommittedOutput>,
    /// The items the shard was committed without (they kept failing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<Quarantined>,
}

/// Whether the job's commits go to a log (its output is a local directory)
/// rather than to a marker per shard (an object store arbitrates).
pub fn logged(layout: &Layout) -> bool {
    layout.output.local_dir().is_some()
}

/// Every commit of the job, one per shard, by shard: the log's (up to its
/// first bad line) and the markers'.
pub fn read(layout: &Layout) -> io::Result<Vec<Marker>> {
    let mut by_shard = BTreeMap::new();
    if logged(layout)
        && let Some(bytes) = layout.output.get(Layout::COMMIT_LOG)?
    {
        for marker in parse(&bytes).markers {
            by_shard.entry(marker.shard).or_insert(marker);
        }
    }
    for marker in read_markers(layout)? {
        by_shard.entry(marker.shard).or_insert(marker);
    }
    Ok(by_shard.into_values().collect())
}

/// Every line of the job's commit log up to its first bad one, as written
/// (a shard on two lines would be a doubled commit: the tests' audit looks).
pub fn read_log(layout: &Layout) -> io::Result<Vec<Marker>> {
    match logged(layout) {
        true => Ok(layout.output.get(Layout::COMMIT_LOG)?.map(|b| parse(&b).markers).unwrap_or_default()),
        false => Ok(Vec::new()),
    }
}

/// The commit of `shard`, if it has one.
pub fn of(layout: &Layout, shard: u32) -> io::Result<Option<Marker>> {
    if !logged(layout) {
        // One object to read, not the whole job's commits.
        return layout.output.read_json::<Marker>(&layout.marker(shard));
    }
    Ok(read(layout)?.into_iter().find(|m| m.shard == shard))
}

/// The marker objects (an object store's commits, or an older mayfly's).
fn read_markers(layout: &Layout) -> io::Result<Vec<Marker>> {
    let mut markers = Vec::new();
    for (key, _) in layout.output.list(layout.markers())? {
        if key.ends_with(".json")
            && let Some(marker) = layout.output.read_json::<Marker>(&key)?
        {
            markers.push(marker);
        }
    }
    Ok(markers)
}

/// A log's text, read up to its first bad line.
#[derive(Debug, Default)]
struct Parsed {
    markers: Vec<Marker>,
    /// The length of the good lines.
    good: usize,
    /// Lines from the first bad one on (a cut-short last line counts).
    dropped: usize,
    /// What is wrong with the first bad line.
    why: Option<String>,
}

/// The log's line for `marker`, as [`CommitLog`] writes it.
pub fn line(marker: &Marker) -> io::Result<Vec<u8>> {
    let json = serde_json::to_vec(marker).map_err(io::Error::other)?;
    let mut line = format!("{:08x} ", crc32fast::hash(&json)).into_bytes();
    line.extend_from_slice(&json);
    line.push(b'\n');
    Ok(line)
}

fn parse(bytes: &[u8]) -> Parsed {
    let mut parsed = Parsed::default();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let Some(end) = rest.iter().position(|b| *b == b'\n') else {
            parsed.why = Some(format!("its last line is cut short ({} bytes, no end)", rest.len()));
            parsed.dropped = 1;
            break;
        };
        let text = &rest[..end];
        let decoded = text.iter().position(|b| *b == b' ').ok_or_else(|| "no checksum".to_owned()).and_then(|space| {
            let (sum, json) = (&text[..space], &text[space + 1..]);
            let sum = std::str::from_utf8(sum).ok().and_then(|s| u32::from_str_radix(s, 16).ok());
            match sum {
                Some(sum) if sum == crc32fast::hash(json) => {
                    serde_json::from_slice::<Marker>(json).map_err(|e| format!("not a commit: {e}"))
                }
                _ => Err("its checksum does not match".to_owned()),
            }
        });
        match decoded {
            Ok(marker) => {
                parsed.markers.push(marker);
                at += end + 1;
                parsed.good = at;
            }
            Err(why) => {
                parsed.why = Some(format!("line {} {why}", parsed.markers.len() + 1));
                let rest = &bytes[at..];
                parsed.dropped = rest.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count().max(1);
                break;
            }
        }
    }
    parsed
}

/// What a restarted master found in the log.
#[derive(Debug)]
pub struct Recovered {
    /// The log's commits, one per shard, in the order they were written.
    pub markers: Vec<Marker>,
    /// What was cut off its end, said for the operator.
    pub cut: Option<String>,
}

/// Reads the job's commit log for a restarted master and cuts off a bad end
/// (a batch the last master was writing when it died: none of it was
/// answered or published, so its shards run again). `None`: no log.
pub fn recover_log(layout: &Layout) -> io::Result<Option<Recovered>> {
    let Some(path) = log_path(layout) else { return Ok(None) };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    };
    let parsed = parse(&bytes);
    let cut = match &parsed.why {
        None => None,
        Some(why) => {
            // Kept aside first: a torn batch is all a crash can leave, but a
            // bad line with whole ones after it would be damage, and its
            // evidence is not thrown away.
            let now = mayfly_model::policy::Clock::now(&mayfly_model::policy::SystemClock);
            let aside = path.with_extension(format!("log.cut-{now}"));
            let mut kept = File::create(&aside)?;
            kept.write_all(&bytes[parsed.good..])?;
            kept.sync_all()?;
            let file = OpenOptions::new().write(true).open(&path)?;
            file.set_len(parsed.good as u64)?;
            file.sync_all()?;
            Some(format!(
                "{}: {why}; {} line(s) from byte {} were cut off (a batch the last master did not finish: \
                 none of it was answered, its shards run again) and kept in {}",
                path.display(),
                parsed.dropped,
                parsed.good,
                aside.display()
            ))
        }
    };
    let mut seen = std::collections::HashSet::new();
    let markers = parsed.markers.into_iter().filter(|m| seen.insert(m.shard)).collect();
    Ok(Some(Recovered { markers, cut }))
}

/// Writes the log anew with exactly `markers` (a restarted master dropping
/// commits whose outputs are gone): a temporary file made durable, renamed
/// over the log, the directory synced.
pub fn rewrite_log(layout: &Layout, markers: &[Marker]) -> io::Result<()> {
    let Some(path) = log_path(layout) else { return Ok(()) };
    let tmp = path.with_extension("log.tmp");
    let mut file = File::create(&tmp)?;
    for marker in markers {
        file.write_all(&line(marker)?)?;
    }
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    sync_dir(&path)
}

/// The master's hold on the job's commit log: while one master holds it, no
/// other can open the log (a second master, resumed while the first still
/// runs, would decide winners apart from it). Released when the process ends,
/// however it ends.
#[derive(Debug)]
pub struct Lock(#[allow(dead_code)] File);

/// Takes the job's commit-log lock (`_mayfly/master.lock`, next to the log),
/// or says that another master holds it. `None`: the output is not local
/// (an object store arbitrates each commit itself).
pub fn lock(layout: &Layout) -> io::Result<Option<Lock>> {
    let Some(log) = log_path(layout) else { return Ok(None) };
    let path = log.with_file_name("master.lock");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(Lock(file))),
        Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "{} is held by another master of this job, still running: only one may decide its commits",
                path.display()
            ),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

fn log_path(layout: &Layout) -> Option<PathBuf> {
    layout.output.local_dir().map(|dir| dir.join(Layout::COMMIT_LOG))
}

fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Makes the entries of `path` and of its directory durable (the log, and
/// `_mayfly/` itself, perhaps just made).
fn sync_dirs(path: &Path) -> io::Result<()> {
    sync_dir(path)?;
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// How a commit fared in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This commit is now the shard's, durably.
    Won,
    /// This very attempt had already committed the shard (a retried commit
    /// whose answer was lost).
    Ours,
    /// Another attempt committed the shard first.
    Lost,
}

/// The master's commit log: the winner of each shard in memory, and the file
/// the winners are appended to (one write and one `fdatasync` per batch).
#[derive(Debug)]
pub struct CommitLog {
    state: Mutex<LogState>,
    /// Held as long as the log is open.
    _lock: Lock,
}

#[derive(Debug)]
struct LogState {
    file: File,
    path: PathBuf,
    /// The file's length: everything up to it is whole lines.
    len: u64,
    /// The token that committed each committed shard.
    winners: HashMap<u32, u64>,
    /// Set once a sync failed: what the file holds is not known any more
    /// (the kernel may have dropped the pages it could not write), so no
    /// further commit is taken until a restarted master reads it back.
    broken: Option<String>,
}

impl CommitLog {
    /// Opens the job's log for appending (creating it), with the commits a
    /// restarted master recovered and the lock it took before recovering
    /// them ([`lock`]). `None`: the output is not local (markers are the
    /// commits).
    pub fn open(layout: &Layout, lock: Option<Lock>, committed: &[Marker]) -> io::Result<Option<CommitLog>> {
        let Some(path) = log_path(layout) else { return Ok(None) };
        let Some(lock) = lock else {
            return Err(io::Error::other(format!("{}: opened without the master's lock on it", path.display())));
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(named)?;
        let len = file.metadata().map_err(named)?.len();
        // The log's own entry in its directory, durable before any commit
        // relies on it.
        sync_dirs(&path).map_err(named)?;
        let winners = committed.iter().map(|m| (m.shard, m.token)).collect();
        Ok(Some(CommitLog { state: Mutex::new(LogState { file, path, len, winners, broken: None }), _lock: lock }))
    }

    /// Decides a batch of commits: each shard's first commit wins, and the
    /// winners are appended and made durable (one write, one sync) before
    /// this returns. An error is the whole batch's: nothing of it counts.
    pub fn append(&self, markers: &[&Marker]) -> Vec<io::Result<Claim>> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = &state.broken {
            return markers.iter().map(|_| Err(io::Error::other(why.clone()))).collect();
        }
        let mut claims = Vec::with_capacity(markers.len());
        let mut bytes = Vec::new();
        let mut won = Vec::new();
        for marker in markers {
            claims.push(match state.winners.get(&marker.shard) {
                Some(t) if *t == marker.token => Ok(Claim::Ours),
                Some(_) => Ok(Claim::Lost),
                None => match line(marker) {
                    Ok(l) => {
                        bytes.extend_from_slice(&l);
                        state.winners.insert(marker.shard, marker.token);
                        won.push(marker.shard);
                        Ok(Claim::Won)
                    }
                    Err(e) => Err(e),
                },
            });
        }
        if won.is_empty() {
            return claims;
        }
        let before = state.len;
        let written = state.file.write_all(&bytes);
        if let Err(e) = written {
            // Nothing of the batch counts: its shards are free again, and a
            // part written is cut off, so that the next batch follows whole
            // lines.
            for shard in &won {
                state.winners.remove(shard);
            }
            let cut = state.file.metadata().map(|m| m.len()).and_then(|len| match len {
                len if len == before => Ok(()),
                _ => state.file.set_len(before),
            });
            if let Err(cut) = cut {
                state.broken = Some(format!(
                    "{}: a write failed ({e}) and its part could not be cut off ({cut}); restart the master \
                     (`mayfly resume`) to read the log back",
                    state.path.display()
                ));
            }
            let why = format!("appending to {}: {e}", state.path.display());
            return fail(claims, markers, &won, &why);
        }
        if let Err(e) = state.file.sync_data() {
            let why = format!(
                "{}: a sync failed ({e}); no commit is taken until the master is restarted (`mayfly resume`)",
                state.path.display()
            );
            state.broken = Some(why.clone());
            return fail(claims, markers, &won, &why);
        }
        state.len = before + bytes.len() as u64;
        claims
    }
}

/// The batch's claims once its write failed: every claim on a shard the
/// batch would have won fails with `why`, the winner's and any other of the
/// same batch (a repeat is not "ours", a rival has not "lost": nothing of
/// the batch is recorded); claims on shards won before stand.
fn fail(claims: Vec<io::Result<Claim>>, markers: &[&Marker], won: &[u32], why: &str) -> Vec<io::Result<Claim>> {
    claims
        .into_iter()
        .zip(markers)
        .map(|(c, m)| match won.contains(&m.shard) {
            true => Err(io::Error::other(why.to_owned())),
            false => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(shard: u32, token: u64) -> Marker {
        Marker {
            job: "j".into(),
            shard,
            token,
            outputs: vec![CommittedOutput { key: format!("k{shard}"), name: "o".into(), bytes: 3 }],
            quarantined: vec![],
        }
    }

    fn layout(dir: &Path) -> Layout {
        Layout::local(&dir.join("state"), "j", &dir.join("out"))
    }

    /// The log opened as a master opens it: its lock first.
    fn open(layout: &Layout, committed: &[Marker]) -> CommitLog {
        CommitLog::open(layout, lock(layout).unwrap(), committed).unwrap().expect("a local output has a log")
    }

    #[test]
    fn each_shards_first_commit_wins_and_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let layout = layout(dir.path());
        let log = open(&layout, &[]);
        let (a, b, c) = (marker(0, 7), marker(0, 8), marker(1, 9));
        let claims: Vec<Claim> = log.append(&[&a, &b, &c]).into_iter().map(Result::unwrap).collect();
        assert_eq!(claims, [Claim::Won, Claim::Lost, Claim::Won]);
        let again: Vec<Claim> = log.append(&[&a, &marker(0, 10)]).into_iter().map(Result::unwrap).collect();
        assert_eq!(again, [Claim::Ours, Claim::Lost]);
        assert_eq!(read(&layout).unwrap(), vec![a.clone(), c.clone()]);
        assert_eq!(of(&layout, 1).unwrap(), Some(c.clone()));
        assert_eq!(of(&layout, 2).unwrap(), None);
        // No second master while this one holds the log.
        let refused = lock(&layout).unwrap_err();
        assert!(refused.to_string().contains("held by another master of this job"), "{refused}");
        // A restarted master knows the winners.
        drop(log);
        let recovered = recover_log(&layout).unwrap().unwrap();
        assert!(recovered.cut.is_none());
        let log = open(&layout, &recovered.markers);
        assert_eq!(log.append(&[&marker(1, 11)])[0].as_ref().unwrap(), &Claim::Lost);
    }

    #[test]
    fn a_torn_end_is_cut_off_and_what_came_before_stands() {
        let dir = tempfile::tempdir().unwrap();
        let layout = layout(dir.path());
        let log = open(&layout, &[]);
        let (a, b) = (marker(0, 1), marker(1, 2));
        assert!(log.append(&[&a, &b]).iter().all(|c| c.is_ok()));
        drop(log);
        let path = dir.path().join("out").join(Layout::COMMIT_LOG);
        let whole = std::fs::read(&path).unwrap();
        let torn = [line(&marker(2, 3)).unwrap(), line(&marker(3, 4)).unwrap()].concat();
        for (tail, what) in [
            (torn[..torn.len() / 3].to_vec(), "cut short"),
            (vec![0u8; 300], "zeros"),
            ([&torn[..10], b"X", &torn[11..]].concat(), "checksum"),
        ] {
            std::fs::write(&path, [whole.as_slice(), &tail].concat()).unwrap();
            // Readers stop at the bad line; they never cut.
            assert_eq!(read(&layout).unwrap(), vec![a.clone(), b.clone()], "{what}");
            assert_eq!(std::fs::read(&path).unwrap().len(), whole.len() + tail.len());
            let recovered = recover_log(&layout).unwrap().unwrap();
            assert_eq!(recovered.markers, vec![a.clone(), b.clone()], "{what}");
            let cut = recovered.cut.expect("the bad end is said");
            assert!(cut.contains("commits.log") && cut.contains(&format!("from byte {}", whole.len())), "{cut}");
            assert_eq!(std::fs::read(&path).unwrap(), whole, "{what}: cut back to the whole lines");
            // What was cut is kept aside, byte for byte.
            let aside = cut.rsplit(" and kept in ").next().unwrap();
            assert_eq!(std::fs::read(aside).unwrap(), tail, "{what}");
            std::fs::remove_file(aside).unwrap();
            // The next batch follows whole lines and is read back.
            let log = open(&layout, &recovered.markers);
            let c = marker(2, 5);
            assert_eq!(log.append(&[&c])[0].as_ref().unwrap(), &Claim::Won);
            assert_eq!(read(&layout).unwrap(), vec![a.clone(), b.clone(), c], "{what}");
            std::fs::write(&path, &whole).unwrap();
        }
    }

    #[test]
    fn a_failed_write_takes_nothing_and_the_shards_can_commit_later() {
        let dir = tempfile::tempdir().unwrap();
        let layout = layout(dir.path());
        let log = open(&layout, &[]);
        // A file opened for appending and then taken away for writing: the
        // state's file is swapped for a read-only handle.
        let path = dir.path().join("out").join(Layout::COMMIT_LOG);
        let writable = {
            let mut state = log.state.lock().unwrap();
            std::mem::replace(&mut state.file, File::open(&path).unwrap())
        };
        let (a, b) = (marker(0, 1), marker(1, 3));
        log.append(&[&b]).into_iter().for_each(|c| assert!(c.is_err()));
        assert!(log.append(&[]).is_empty());
        // A repeat and a rival in the failed batch fail with it: nothing of
        // the batch is recorded, so neither is "ours" nor "lost".
        let (repeat, rival) = (a.clone(), marker(0, 9));
        let refused = log.append(&[&a, &repeat, &rival]);
        assert!(
            refused.iter().all(|c| c.as_ref().is_err_and(|e| e.to_string().contains("appending to"))),
            "{refused:?}"
        );
        log.state.lock().unwrap().file = writable;
        assert_eq!(log.append(&[&marker(0, 2)])[0].as_ref().unwrap(), &Claim::Won, "the shard was free again");
        assert_eq!(read(&layout).unwrap().iter().map(|m| m.token).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn a_rewritten_log_holds_exactly_what_it_was_given() {
        let dir = tempfile::tempdir().unwrap();
        let layout = layout(dir.path());
        let log = open(&layout, &[]);
        let all = [marker(0, 1), marker(1, 2), marker(2, 3)];
        assert!(log.append(&all.iter().collect::<Vec<_>>()).iter().all(|c| c.is_ok()));
        rewrite_log(&layout, &[all[0].clone(), all[2].clone()]).unwrap();
        assert_eq!(read(&layout).unwrap(), vec![all[0].clone(), all[2].clone()]);
        assert!(!dir.path().join("out/_mayfly/commits.log.tmp").exists());
    }

    #[test]
    fn an_object_store_output_has_no_log_and_markers_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let layout = layout(dir.path());
        // Markers, as a store arbiter (or an older mayfly) left them.
        let m = marker(4, 9);
        layout.output.write_json(&layout.marker(4), &m).unwrap();
        assert_eq!(read(&layout).unwrap(), vec![m.clone()]);
        assert_eq!(of(&layout, 4).unwrap(), Some(m));
        let provider = mayfly_data::provider::ProviderHandle::select(&Default::default()).unwrap();
        let url = |d: &str| {
            mayfly_data::store::Location::parse(&format!("file://{}", dir.path().join(d).display()), dir.path())
                .unwrap()
        };
        let remote = Layout::open(&url("rstate/j"), "j", &url("rout"), &provider, "master").unwrap();
        assert!(!logged(&remote) && lock(&remote).unwrap().is_none());
        assert!(CommitLog::open(&remote, None, &[]).unwrap().is_none());
    }
}
