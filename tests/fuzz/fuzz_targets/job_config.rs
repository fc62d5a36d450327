//! The job-config parser: any text, as a job file, gives a job or an error
//! that names a line or a key; it never panics.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // `${VAR}` substitution sees one variable, so both of its paths run.
    let env = |name: &str| (name == "MAYFLY_FUZZ").then(|| "value".to_owned());
    let path = std::path::Path::new("/nonexistent/job.toml");
    if let Err(e) = mayfly_core::config::JobSpec::parse(path, text, &env) {
        // The error renders (its line and key lookups run on the text).
        let _ = e.to_string();
    }
});
