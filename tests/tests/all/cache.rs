//! The compile cache: a second load of the same wasm is served from disk,
//! keyed by the wasm's hash, and a damaged entry is recompiled.

use mayfly_core::host::{Runtime, RuntimeConfig};
use mayfly_tests::{component, scratch};

fn fresh_runtime(cache: &std::path::Path) -> Runtime {
    Runtime::new(&RuntimeConfig { cache_dir: Some(cache.to_owned()), max_concurrent: 2 }).unwrap()
}

#[test]
fn second_load_comes_from_the_cache_and_damage_is_repaired() {
    let cache = scratch("cache").join("c");
    let wasm = component("tests/guests/empty");
    let first = fresh_runtime(&cache).load(&wasm).unwrap();
    assert!(!first.from_cache);
    let entries: Vec<_> = std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let name = entries[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with(first.sha256()), "the key starts with the wasm's sha256: {name}");

    let second = fresh_runtime(&cache).load(&wasm).unwrap();
    assert!(second.from_cache);
    assert_eq!(second.sha256(), first.sha256());

    // Damage the entry: the next load must compile again, not crash.
    std::fs::write(&entries[0], b"garbage").unwrap();
    let third = fresh_runtime(&cache).load(&wasm).unwrap();
    assert!(!third.from_cache);
    let fourth = fresh_runtime(&cache).load(&wasm).unwrap();
    assert!(fourth.from_cache, "the repaired entry is used again");
}

#[test]
fn a_cache_directory_others_can_write_is_not_used() {
    use std::os::unix::fs::PermissionsExt;
    let cache = scratch("cache-open").join("c");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let rt = fresh_runtime(&cache);
    let warning = rt.cache_warning.as_ref().unwrap();
    assert!(matches!(warning, mayfly_core::host::CacheRefused::Writable(dir) if *dir == cache), "{warning}");
    assert!(warning.to_string().contains("writable by group or others"), "{warning}");
    let task = rt.load(&component("tests/guests/empty")).unwrap();
    assert!(!task.from_cache);
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
}
