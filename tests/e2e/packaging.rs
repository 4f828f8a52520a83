//! The Debian package: `cargo deb -p dedisk` builds it, dpkg installs it, and what it
//! installed works (the binary, the man pages, the completions, the units, the example
//! job); the generated man pages and completions it ships are those of this build.

use std::path::Path;
use std::process::Command;

use crate::helpers::*;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Every file of `dir`, by name, with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn shipped_man_pages_and_completions_are_those_of_this_build() {
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man");
    ok(&["manpages", p(&man)]);
    let names = |v: &[(String, Vec<u8>)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    let (fresh, shipped) = (files(&man), files(&root().join("packaging/man")));
    assert_eq!(names(&fresh), names(&shipped), "run packaging/generate.sh");
    for ((name, a), (_, b)) in fresh.iter().zip(&shipped) {
        assert!(
            a == b,
            "packaging/man/{name} is stale: run packaging/generate.sh"
        );
    }
    for (shell, file) in [
        ("bash", "dedisk.bash"),
        ("zsh", "_dedisk"),
        ("fish", "dedisk.fish"),
    ] {
        let shipped =
            std::fs::read_to_string(root().join("packaging/completions").join(file)).unwrap();
        assert!(
            ok(&["completions", shell]) == shipped,
            "packaging/completions/{file} is stale: run packaging/generate.sh"
        );
    }
}

fn sh_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_debian_package_installs_and_what_it_installs_works() {
    let tools = have("cargo-deb") && have("dpkg") && have("systemd-analyze") && have("man");
    if !tools || !is_root() || Path::new("/usr/bin/dedisk").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "cargo-deb, dpkg, systemd-analyze, man, root and no installed dedisk are required under CI"
        );
        eprintln!("SKIPPED: needs cargo-deb, dpkg, root, and no dedisk installed already");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Its own target folder: the one `cargo test` uses is locked while the tests run.
    let target = root().join("target/deb");
    sh_ok(
        Command::new("cargo")
            .args(["deb", "-p", "dedisk"])
            .env("CARGO_TARGET_DIR", &target)
            .arg("--output")
            .arg(d)
            .current_dir(root()),
    );
    let deb = std::fs::read_dir(d)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("cargo deb wrote a .deb");
    let contents = sh_ok(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for want in [
        "./usr/bin/dedisk",
        "./lib/systemd/system/dedisk-run@.service",
        "./lib/systemd/system/dedisk-run@.timer",
        "./lib/systemd/system/dedisk-verify@.timer",
        "./lib/systemd/system/dedisk-prune@.timer",
        "./usr/share/man/man1/dedisk.1.gz",
        "./usr/share/man/man1/dedisk-run.1.gz",
        "./usr/share/bash-completion/completions/dedisk",
        "./usr/share/zsh/vendor-completions/_dedisk",
        "./usr/share/fish/vendor_completions.d/dedisk.fish",
        "./usr/share/doc/dedisk/examples/nightly.toml",
        "./usr/share/doc/dedisk/JSON.md",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(want)),
            "{want} missing from the package:\n{contents}"
        );
    }

    sh_ok(Command::new("dpkg").arg("-i").arg(&deb));
    // Removed whatever happens below.
    struct Purge;
    impl Drop for Purge {
        fn drop(&mut self) {
            let _ = Command::new("dpkg").args(["--purge", "dedisk"]).status();
        }
    }
    let purge = Purge;

    let version = sh_ok(Command::new("/usr/bin/dedisk").arg("--version"));
    assert_eq!(
        version.trim(),
        format!("dedisk {}", env!("CARGO_PKG_VERSION"))
    );
    let page = sh_ok(Command::new("man").args(["-w", "dedisk-run"]));
    assert_eq!(page.trim(), "/usr/share/man/man1/dedisk-run.1.gz");
    // bash-completion's loader finds the script by the command's name.
    let complete = sh_ok(Command::new("bash").args([
        "-c",
        ". /usr/share/bash-completion/completions/dedisk && complete -p dedisk",
    ]));
    assert!(complete.contains("dedisk"), "{complete}");
    // The installed units as systemd sees them, instantiated for a job "nightly".
    for unit in [
        "dedisk-run@.service",
        "dedisk-run@.timer",
        "dedisk-verify@.service",
        "dedisk-prune@.service",
    ] {
        let instance = d.join(unit.replace("@.", "@nightly."));
        std::os::unix::fs::symlink(Path::new("/lib/systemd/system").join(unit), &instance).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&instance)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{unit}: {err}");
        assert!(err.trim().is_empty(), "{unit}: warnings: {err}");
    }
    // The example job loads: every setting in it is one dedisk knows. (Its VMs and
    // paths are examples, so the preview lists problems; the libvirt selection is
    // left out, as libvirtd need not run here.)
    let example = std::fs::read_to_string("/usr/share/doc/dedisk/examples/nightly.toml").unwrap();
    let job = d.join("nightly.toml");
    std::fs::write(&job, example.replace("from = \"libvirt\"\n", "")).unwrap();
    let out = Command::new("/usr/bin/dedisk")
        .args(["--json", "run", "--preview"])
        .arg(&job)
        .output()
        .unwrap();
    let first: serde_json::Value =
        serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(first["type"], "preview", "{first}");
    assert!(first["plan"].to_string().contains("mail01"), "{first}");

    drop(purge);
    assert!(
        !Path::new("/usr/bin/dedisk").exists(),
        "dpkg --purge removed it"
    );
    assert!(!Path::new("/lib/systemd/system/dedisk-run@.service").exists());
}
