//! The systemd units in packaging/systemd: `systemd-analyze verify` accepts every
//! service and timer (with an instance, and the ExecStart binary pointed at this build),
//! without a warning, and the man pages they name exist.

use std::path::Path;
use std::process::Command;

use crate::helpers::*;

#[test]
fn every_unit_passes_systemd_analyze_verify() {
    if !have("systemd-analyze") {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is required under CI"
        );
        eprintln!("SKIPPED: no systemd-analyze");
        return;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd");
    let bin = env!("CARGO_BIN_EXE_dedisk");
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(entry.path()).unwrap();
        assert!(
            text.contains("/usr/bin/dedisk") || name.ends_with(".timer"),
            "{name} runs the packaged binary"
        );
        std::fs::write(dir.path().join(&name), text.replace("/usr/bin/dedisk", bin)).unwrap();
        // Templates are verified as an instance of themselves.
        let instance = name.replace("@.", "@nightly.");
        std::os::unix::fs::symlink(dir.path().join(&name), dir.path().join(&instance)).unwrap();
        units.push(dir.path().join(instance));
    }
    assert_eq!(
        units.len(),
        6,
        "run, verify and prune: a service and a timer each"
    );
    // Documentation=man:dedisk-run(1) and the others must name pages the package has:
    // verify looks them up, here among the pages this build writes.
    let man = tempfile::tempdir().unwrap();
    ok(&["manpages", p(&man.path().join("man1"))]);
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .env("MANPATH", man.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.trim().is_empty(), "warnings: {err}");
}
