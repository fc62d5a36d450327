//! `mayfly package`: builds what a provider's cloud runs, from this
//! workspace: the serverless function's package (`function.zip`: a
//! `bootstrap` that runs `mayfly serve`, `mayfly` and the provider's plugin)
//! and the nodes' artifact (`node.tar.gz`: `mayfly` and the plugin), with a
//! `package.json` that says what they are, and the same two files in `bin/`
//! for the operator's own commands (`deploy`, `status`, `logs`, `reap`).
//!
//! What a provider's cloud needs is the provider's to say, in its crate's
//! `Cargo.toml` ([`needs`]): a cloud's machine images may have an older C
//! library than this machine, and then the build links against that version
//! with `cargo zigbuild` (the nodes load the plugin with `dlopen`, so a static
//! musl build is not an option); every file is checked for the versions it
//! needs before it is packaged. A serverless platform's own files (a function
//! app's `host.json`...) come from the provider's crate as they are. This
//! module names no provider.
//!
//! In `mayfly-ops`'s flow (`core/tests/flow.rs` checks it) it must not import `reap`,
//! `scaffold`, `check`, `replay` or `watch`, or anything above, nor its peers `cost`,
//! `report` and `demo`; like its crate, it must not import the binary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The package's description, `package.json` in its directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The provider it is for.
    pub provider: String,
    /// The CPU architecture (`x86_64`, `aarch64`).
    pub architecture: String,
    /// The newest glibc version its files need (`2.34`).
    pub glibc: String,
    /// The function's package, relative to the directory.
    pub function: String,
    /// The nodes' artifact, relative to the directory.
    pub node: String,
    /// `mayfly`'s version.
    pub version: String,
}

/// What to build.
#[derive(Debug, Clone)]
pub struct Options {
    /// The provider (`aws`): its plugin is `providers/<name>`, package `mayfly-provider-<name>`.
    pub provider: String,
    /// The mayfly workspace to build from.
    pub workspace: PathBuf,
    /// Where the package goes.
    pub out: PathBuf,
    /// The newest glibc the files may need (`None`: this machine's).
    pub glibc: Option<String>,
    /// Whether to link against `glibc` with `cargo zigbuild` (else the
    /// machine's own toolchain builds, and `glibc` is only checked).
    pub zig: bool,
    /// `mayfly`'s features.
    pub features: Vec<String>,
    /// The function's files besides the bootstrap, `mayfly` and the plugin
    /// (a directory; its files keep their relative paths).
    pub function_app: Option<PathBuf>,
    /// The cargo profile to build with ([`PROFILE`] unless a test asks for a quicker one).
    pub profile: String,
}

/// What a provider's cloud needs from its package, as the provider declares
/// it in its crate's `Cargo.toml`, `[package.metadata.mayfly.package]`:
/// `glibc` (the newest its platform has), `zig` (link against that glibc
/// with `cargo zigbuild`), `features` (mayfly's, e.g. `s3`), and
/// `function_app` (a directory of the function's files, packaged as they are).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Needs {
    /// The newest glibc the files may need.
    pub glibc: Option<String>,
    /// Whether to link against `glibc` with `cargo zigbuild`.
    #[serde(default)]
    pub zig: bool,
    /// `mayfly`'s features.
    #[serde(default)]
    pub features: Vec<String>,
    /// The function app's files, a directory relative to the provider's crate.
    pub function_app: Option<PathBuf>,
}

/// Reads a provider crate's packaging needs from its `Cargo.toml` (none
/// declared: this machine's glibc, no features, no function files).
pub fn needs(crate_dir: &Path) -> Result<Needs> {
    let path = crate_dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let doc: toml::Table = text.parse().with_context(|| format!("{}: not valid TOML", path.display()))?;
    let table = ["package", "metadata", "mayfly", "package"]
        .iter()
        .try_fold(&doc, |t, key| t.get(*key).and_then(toml::Value::as_table));
    let Some(table) = table else { return Ok(Needs::default()) };
    let mut needs: Needs = toml::Value::Table(table.clone())
        .try_into()
        .with_context(|| format!("{}: [package.metadata.mayfly.package]", path.display()))?;
    if let Some(dir) = &needs.function_app {
        needs.function_app = Some(crate_dir.join(dir));
    }
    Ok(needs)
}

impl Options {
    /// What `provider`'s cloud needs, as its crate in `workspace` declares it ([`needs`]).
    pub fn for_provider(provider: &str, workspace: PathBuf, out: PathBuf) -> Result<Options> {
        let crate_dir = workspace.join("providers").join(provider);
        let needs = if crate_dir.join("Cargo.toml").is_file() { needs(&crate_dir)? } else { Needs::default() };
        Ok(Options {
            provider: provider.to_owned(),
            workspace,
            out,
            glibc: needs.glibc,
            zig: needs.zig,
            features: needs.features,
            function_app: needs.function_app,
            profile: PROFILE.to_owned(),
        })
    }
}

/// The cargo profile packages are built with by default (release, no debug
/// info, stripped).
pub const PROFILE: &str = "ship";

/// The plugin's file name for `provider`.
fn plugin_file(provider: &str) -> String {
    format!("libmayfly_provider_{}.so", provider.replace('-', "_"))
}

/// The function's `bootstrap`: Lambda's custom runtimes (and the like) run it
/// from the package's directory.
fn bootstrap_script(provider: &str) -> String {
    format!(
        "#!/bin/sh\n\
         # The function's entrypoint, written by `mayfly package {provider}`: mayfly serves\n\
         # the platform's events with the plugin beside it (found by name, as the nodes\n\
         # find theirs); its settings come from the MAYFLY_PROVIDER_SETTINGS environment\n\
         # variable (set by `mayfly deploy`).\n\
         unset MAYFLY_PLUGIN_PATH\n\
         cd \"$(dirname \"$0\")\" || exit 1\n\
         exec ./mayfly serve --provider {provider}\n"
    )
}

/// The files under `dir`, by their paths relative to it, in order.
fn function_files(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    fn walk(root: &Path, dir: &Path, files: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                walk(root, &path, files)?;
            } else {
                let name = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
                files.push((name, std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?));
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort();
    Ok(files)
}

/// Builds the package; returns its manifest.
pub fn package(options: &Options, say: &mut dyn FnMut(&str)) -> Result<Manifest> {
    let Options { provider, workspace, out, glibc, zig, features, function_app, profile } = options;
    let crate_dir = workspace.join("providers").join(provider);
    if !crate_dir.join("Cargo.toml").is_file() || !workspace.join("core/Cargo.toml").is_file() {
        bail!(
            "{} is not a mayfly workspace with a `{provider}` provider (no providers/{provider}/Cargo.toml): \
             run `mayfly package` from mayfly's checkout, or pass --workspace",
            workspace.display()
        );
    }
    let arch = std::env::consts::ARCH;
    let triple = format!("{arch}-unknown-linux-gnu");
    let mut cargo = Command::new("cargo");
    match glibc {
        Some(version) if *zig => {
            check_zigbuild()?;
            cargo.args(["zigbuild", "--target", &format!("{triple}.{version}")]);
        }
        _ => {
            cargo.args(["build", "--target", &triple]);
        }
    }
    cargo.args(["--profile", profile, "-p", "mayfly", "-p", &format!("mayfly-provider-{provider}")]);
    if !features.is_empty() {
        let list: Vec<String> = features.iter().map(|f| format!("mayfly/{f}")).collect();
        cargo.args(["--features", &list.join(",")]);
    }
    cargo.current_dir(workspace);
    say(&format!("building: {cargo:?}"));
    let status = cargo.status().context("running cargo")?;
    if !status.success() {
        bail!("the build failed ({status}); its errors are above");
    }
    // Cargo puts the `dev` profile's files in `debug/`.
    let built = target_dir(workspace)?.join(&triple).join(if profile == "dev" { "debug" } else { profile });
    let plugin = plugin_file(provider);
    let files = [built.join("mayfly"), built.join(&plugin)];
    let mut newest = (0, 0);
    for file in &files {
        let needs = glibc_needed(file)?;
        if let Some(limit) = glibc {
            let limit =
                parse_version(limit).with_context(|| format!("--glibc {limit:?}: expected a version like 2.34"))?;
            if needs > limit {
                bail!(
                    "{} needs glibc {}.{}, newer than the {}.{} the platform has",
                    file.display(),
                    needs.0,
                    needs.1,
                    limit.0,
                    limit.1
                );
            }
        }
        newest = newest.max(needs);
    }

    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let function = "function.zip";
    let node = "node.tar.gz";
    let bootstrap = bootstrap_script(provider);
    let binary = std::fs::read(&files[0]).with_context(|| format!("reading {}", files[0].display()))?;
    let library = std::fs::read(&files[1]).with_context(|| format!("reading {}", files[1].display()))?;
    let app = match function_app {
        Some(dir) => function_files(dir)?,
        None => Vec::new(),
    };
    let mut files_in_function: Vec<(String, u32, Vec<u8>)> =
        app.iter().map(|(name, bytes)| (name.clone(), 0o644, bytes.clone())).collect();
    files_in_function.push(("bootstrap".into(), 0o755, bootstrap.into_bytes()));
    files_in_function.push(("mayfly".into(), 0o755, binary));
    files_in_function.push((plugin.clone(), 0o644, library));
    let entries: Vec<(&str, u32, &[u8])> =
        files_in_function.iter().map(|(n, m, b)| (n.as_str(), *m, b.as_slice())).collect();
    write_atomically(&out.join(function), |f| zip(f, &entries))?;
    if !app.is_empty() {
        // The same function app as a folder (what `func azure functionapp publish` takes).
        write_folder(&out.join("function-app"), &entries)?;
    }
    write_node_artifact(&out.join(node), &files[0], &files[1], &plugin)?;
    // The same two files, ready to run here (for `deploy`, `status`, `logs`, `reap`).
    let bin = out.join("bin");
    std::fs::create_dir_all(&bin)?;
    for (from, name, mode) in [(&files[0], "mayfly", 0o755), (&files[1], plugin.as_str(), 0o644)] {
        use std::os::unix::fs::PermissionsExt;
        let tmp = bin.join(format!(".{name}.partial"));
        std::fs::copy(from, &tmp).with_context(|| format!("copying {}", from.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, bin.join(name))?;
    }
    let manifest = Manifest {
        provider: provider.clone(),
        architecture: arch.to_owned(),
        glibc: format!("{}.{}", newest.0, newest.1),
        function: function.into(),
        node: node.into(),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    write_atomically(&out.join("package.json"), |f| {
        serde_json::to_writer_pretty(&mut *f, &manifest)?;
        Ok(f.write_all(b"\n")?)
    })?;
    Ok(manifest)
}

/// The key the nodes' artifact at `path` is uploaded under:
/// `node-<sha256 of its bytes>.tar.gz`.
pub fn node_key(path: &Path) -> Result<String> {
    use sha2::Digest;
    let mut file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        use std::io::Read;
        let n = file.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("node-{}.tar.gz", hex::encode(hasher.finalize())))
}

/// Reads a package's manifest.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join("package.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: not a package (make one with `mayfly package <provider>`)", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a package manifest", path.display()))
}

fn check_zigbuild() -> Result<()> {
    let ok = Command::new("cargo").args(["zigbuild", "--help"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        bail!(
            "`cargo zigbuild` is not installed: packages for an older glibc are linked with zig. \
             Install both with `cargo install --locked cargo-zigbuild` and `pip install ziglang` \
             (or zig from your package manager), then run this again"
        );
    }
    Ok(())
}

/// The workspace's target directory (`CARGO_TARGET_DIR` or its `target/`).
fn target_dir(workspace: &Path) -> Result<PathBuf> {
    let out = Command::new("cargo")
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(workspace)
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).context("reading cargo metadata")?;
    meta["target_directory"].as_str().map(PathBuf::from).context("cargo metadata gave no target directory")
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let (major, minor) = v.split_once('.')?;
    let minor = minor.split('.').next()?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The newest `GLIBC_x.y` version an ELF file asks the dynamic linker for
/// (`(0, 0)` when it asks for none).
pub fn glibc_needed(file: &Path) -> Result<(u32, u32)> {
    use object::{Object, ObjectSection};
    let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let elf =
        object::File::parse(&*data).with_context(|| format!("{}: not an executable (ELF) file", file.display()))?;
    let Some(strings) = elf.section_by_name(".dynstr") else { return Ok((0, 0)) };
    let strings = strings.data().with_context(|| format!("{}: a broken .dynstr section", file.display()))?;
    Ok(strings
        .split(|b| *b == 0)
        .filter_map(|s| std::str::from_utf8(s).ok()?.strip_prefix("GLIBC_"))
        // Packed relative relocations (a newer linker's default) need glibc 2.36.
        .filter_map(|v| if v == "ABI_DT_RELR" { Some((2, 36)) } else { parse_version(v) })
        .max()
        .unwrap_or((0, 0)))
}

/// Writes `files` (name, Unix mode, bytes) under `dir`, made anew beside it
/// and renamed into place.
fn write_folder(dir: &Path, files: &[(&str, u32, &[u8])]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let staging = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&staging);
    for (name, mode, bytes) in files {
        let at = staging.join(name);
        if let Some(parent) = at.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&at, bytes).with_context(|| format!("writing {}", at.display()))?;
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(*mode))?;
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&staging, dir).with_context(|| format!("renaming {} into place", staging.display()))?;
    Ok(())
}

/// Writes `path` through a temporary file renamed into place: never half a file.
fn write_atomically(path: &Path, write: impl FnOnce(&mut std::fs::File) -> Result<()>) -> Result<()> {
    let tmp = path.with_extension("partial");
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    write(&mut f).with_context(|| format!("writing {}", tmp.display()))?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", tmp.display()))?;
    Ok(())
}

/// The nodes' artifact: a gzipped tar of `mayfly` and the plugin, as `tar`
/// makes it (the nodes unpack it with `tar -xzf`).
fn write_node_artifact(to: &Path, binary: &Path, plugin: &Path, plugin_name: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let staging = to.with_extension("staging");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    for (from, name, mode) in [(binary, "mayfly", 0o755), (plugin, plugin_name, 0o644)] {
        let at = staging.join(name);
        std::fs::copy(from, &at).with_context(|| format!("copying {}", from.display()))?;
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(mode))?;
    }
    let tmp = to.with_extension("partial");
    let status = Command::new("tar")
        .args(["--owner=0", "--group=0", "--numeric-owner", "-czf"])
        .arg(&tmp)
        .arg("-C")
        .arg(&staging)
        .args(["mayfly", plugin_name])
        .status()
        .context("running tar")?;
    let _ = std::fs::remove_dir_all(&staging);
    if !status.success() {
        bail!("tar failed ({status}) making {}", to.display());
    }
    std::fs::rename(&tmp, to)?;
    Ok(())
}

/// Writes a zip archive of `files` (name, Unix mode, bytes), stored without
/// compression (the platform unpacks it once per cold start), with no
/// timestamps (1980-01-01), so that the same files make the same archive.
pub fn zip(out: &mut std::fs::File, files: &[(&str, u32, &[u8])]) -> Result<()> {
    let mut archive = ::zip::ZipWriter::new(out);
    for (name, mode, bytes) in files {
        let options = ::zip::write::SimpleFileOptions::default()
            .compression_method(::zip::CompressionMethod::Stored)
            .last_modified_time(::zip::DateTime::default())
            .unix_permissions(*mode)
            .large_file(bytes.len() as u64 >= u64::from(u32::MAX));
        archive.start_file(*name, options).with_context(|| format!("adding {name} to the zip"))?;
        archive.write_all(bytes).with_context(|| format!("adding {name} to the zip"))?;
    }
    archive.finish().context("ending the zip")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zips_unpack_with_unzip_tools_and_keep_modes() {
        // Python's zipfile is the reader here (on every machine with python3).
        let dir = std::env::temp_dir().join(format!("mayfly-zip-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.zip");
        let mut f = std::fs::File::create(&path).unwrap();
        zip(&mut f, &[("bootstrap", 0o755, b"#!/bin/sh\necho hi\n"), ("lib.so", 0o644, &[0u8, 1, 2, 255][..])])
            .unwrap();
        drop(f);
        let script = "import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\nassert z.testzip() is None\n\
                      for i in z.infolist(): print(i.filename, oct(i.external_attr >> 16), z.read(i).hex())";
        let out = Command::new("python3").args(["-c", script]).arg(&path).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            vec![
                format!("bootstrap 0o100755 {}", hex::encode(b"#!/bin/sh\necho hi\n")),
                "lib.so 0o100644 000102ff".to_owned()
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn each_provider_declares_what_its_package_needs() {
        let providers = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../providers");
        let aws = needs(&providers.join("aws")).unwrap();
        assert_eq!(
            (aws.glibc.as_deref(), aws.zig, aws.features.as_slice()),
            (Some("2.34"), true, &["s3".to_owned()][..])
        );
        assert_eq!(aws.function_app, None);
        let azure = needs(&providers.join("azure")).unwrap();
        assert_eq!((azure.glibc.as_deref(), azure.zig), (Some("2.36"), false));
        let files = function_files(azure.function_app.as_deref().unwrap()).unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["blob/function.json", "host.json", "run/function.json"]);
        for (name, bytes) in &files {
            let _: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let blob = String::from_utf8_lossy(&files[0].1);
        assert!(blob.contains("blobTrigger") && blob.contains("%MAYFLY_TRIGGER_PATH%"), "{blob}");
        // A provider that declares nothing: this machine's glibc, no features.
        assert_eq!(needs(&providers.join("local")).unwrap(), Needs::default());
    }

    #[test]
    fn a_misspelt_packaging_need_is_an_error_naming_the_table() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("Cargo.toml"),
            "[package]\nname = \"x\"\n[package.metadata.mayfly.package]\nglib = \"2.34\"\n",
        )
        .unwrap();
        let e = format!("{:#}", needs(dir.path()).unwrap_err());
        assert!(e.contains("[package.metadata.mayfly.package]") && e.contains("glib"), "{e}");
    }

    #[test]
    fn the_glibc_a_binary_needs_is_read_from_its_dynamic_strings() {
        // This test's own executable links glibc dynamically: it needs some 2.x.
        let me = std::env::current_exe().unwrap();
        let (major, minor) = glibc_needed(&me).unwrap();
        assert_eq!(major, 2);
        assert!(minor >= 2, "{minor}");
        let text = std::env::temp_dir().join(format!("mayfly-not-elf-{}", std::process::id()));
        std::fs::write(&text, "not a program").unwrap();
        let e = glibc_needed(&text).unwrap_err();
        assert!(format!("{e:#}").contains("not an executable"), "{e:#}");
        let _ = std::fs::remove_file(&text);
        assert_eq!(parse_version("2.34"), Some((2, 34)));
        assert_eq!(parse_version("2.3.4"), Some((2, 3)));
        assert_eq!(parse_version("x"), None);
    }
}
