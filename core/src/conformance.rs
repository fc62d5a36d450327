//! Core's side of the provider conformance suite
//! ([`mayfly_provider_api::conformance`]): the four rules as core applies
//! them, and real jobs bootstrapped and run to their end on the provider
//! under test.
//!
//! ```ignore
//! let core = mayfly_core::conformance::Kit::new(scratch_dir, wordcount_wasm);
//! mayfly_provider_api::conformance::assert_conforms(&my_backend, &core);
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mayfly_provider_api::conformance::Core;
use mayfly_provider_api::{BootstrapReply, BootstrapRequest, Millis, Validity};

use crate::config::JobSpec;
use crate::job::read_json;
use crate::master::FinalState;
use crate::policy::{Clock, CredentialPolicy, ManualClock, SystemClock};

/// Core for the conformance suite: jobs run the word-count component at
/// `task` over a few small generated files under `scratch`.
#[derive(Debug, Clone)]
pub struct Kit {
    scratch: PathBuf,
    task: PathBuf,
}

impl Kit {
    /// A kit writing its jobs' inputs and outputs under `scratch`, running
    /// the word-count component `task` (`tasks/wordcount` built for wasm).
    pub fn new(scratch: &Path, task: &Path) -> Kit {
        Kit { scratch: scratch.to_owned(), task: task.to_owned() }
    }
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The provider a request's job file selects.
fn provider_of(request: &BootstrapRequest) -> Result<crate::provider::ProviderHandle, String> {
    let base = request.base_dir.as_deref().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    let spec = JobSpec::parse(&base.join("job.toml"), &request.job, &|k| request.overrides.get(k).cloned())
        .map_err(|e| e.to_string())?;
    spec.provider_handle().map_err(|e| e.to_string())
}

impl Core for Kit {
    fn refresh_at(&self, validity: Validity) -> Millis {
        CredentialPolicy::default().refresh_at(validity)
    }

    fn lease_expiry(&self, now: Millis, lease: Duration, validity: Validity) -> Millis {
        CredentialPolicy::default().lease_expiry(now, lease, validity)
    }

    fn job_request(
        &self,
        job: &str,
        state_root: &str,
        section: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<BootstrapRequest, String> {
        let dir = self.scratch.join(job);
        let input = dir.join("in");
        std::fs::create_dir_all(&input).map_err(|e| format!("{}: {e}", input.display()))?;
        for i in 0..6 {
            let text = format!("the quick brown fox {i}\njumps over the lazy dog {i}\n").repeat(50 + i);
            std::fs::write(input.join(format!("part-{i}.txt")), text).map_err(|e| e.to_string())?;
        }
        let provider = toml::Value::try_from(section)
            .map_err(|e| format!("the [provider] section cannot be written as TOML: {e}"))?;
        let provider = toml::to_string(&provider).map_err(|e| e.to_string())?;
        let text = format!(
            "[job]\nname = \"conformance\"\nid = {id}\n\n[task]\npath = {task}\nparams = {{ mode = \"map\" }}\n\n\
             [input]\nurl = {input}\n\n[output]\nurl = {output}\n\n[state]\nurl = {state}\n\n\
             [cluster]\nworkers = 2\ndeadline = \"3m\"\nidle_timeout = \"20s\"\n\n[provider]\n{provider}",
            id = toml_string(job),
            task = toml_string(&self.task.to_string_lossy()),
            input = toml_string(&input.to_string_lossy()),
            output = toml_string(&dir.join("out").to_string_lossy()),
            state = toml_string(state_root),
        );
        Ok(BootstrapRequest { job: text, base_dir: Some(dir.to_string_lossy().into_owned()), ..Default::default() })
    }

    fn bootstrap(&self, request: &BootstrapRequest) -> Result<BootstrapReply, String> {
        let provider = provider_of(request)?;
        crate::bootstrap::from_request(request, &provider).map_err(|e| e.to_string())
    }

    fn bootstrap_overrunning(&self, request: &BootstrapRequest) -> Result<BootstrapReply, String> {
        let provider = provider_of(request)?;
        let limit = provider.limits().bootstrap_limit();
        let clock = ManualClock::new(SystemClock.now());
        let ticking = clock.clone();
        // After the master's launch the clock jumps past the limit: the next
        // step must be refused and the master ended.
        crate::bootstrap::from_request_on(request, &provider, &clock, &mut |step| {
            if step == "wait for the master" {
                ticking.advance(limit);
            }
        })
        .map_err(|e| e.to_string())
    }

    fn wait(&self, reply: &BootstrapReply, timeout: Duration) -> Result<(), String> {
        let path = Path::new(&reply.state).join("final.json");
        let start = Instant::now();
        let fin: FinalState = loop {
            if let Ok(fin) = read_json(&path) {
                break fin;
            }
            if start.elapsed() > timeout {
                return Err(format!("job {} did not end within {timeout:?} (no {})", reply.job, path.display()));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let c = fin.counts;
        if fin.reason != "done" || c.failed > 0 || u64::from(c.committed) != reply.shards {
            return Err(format!(
                "job {} ended ({}) with {} of {} shards committed, {} failed: {:?}",
                reply.job, fin.reason, c.committed, reply.shards, c.failed, fin.failed
            ));
        }
        if reply.shards > 0 && !fin.outputs.iter().any(|o| o.ends_with("counts.tsv")) {
            return Err(format!("job {} committed no word counts: {:?}", reply.job, fin.outputs));
        }
        Ok(())
    }
}
