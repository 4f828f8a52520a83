//! The one rule for names that end up as file names: disk labels, metadata file names
//! and VM names (FORMAT.md, "Names"). Backup checks them before writing a snapshot and
//! [`crate::Snapshot::decode`] checks them again on every read, because a repository may
//! be written by someone else: a restore into a folder or a mount uses these names as
//! path components, so `../x`, `/etc/cron.d/job` or `a/b` must never get that far.
//!
//! The rule is the one dedisk has enforced for labels since format version 1, so every
//! snapshot an honest dedisk wrote passes it.

/// Longest label, metadata name or VM name, in bytes (a file name is at most 255).
pub const MAX_NAME_BYTES: usize = 200;

/// Why a name is refused, for messages: "`../x`: contains '/'".
pub fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.len() > MAX_NAME_BYTES {
        Some("is longer than 200 bytes")
    } else if name == "." || name == ".." {
        Some("is '.' or '..'")
    } else if name.contains('/') {
        Some("contains '/'")
    } else if name.chars().any(|c| c == '\0' || c.is_control()) {
        Some("contains a control character")
    } else {
        None
    }
}

/// Checks a disk label or metadata file name: it becomes one file name inside a restore
/// folder or a mounted snapshot directory, so it must be exactly one path component.
pub fn check_label(label: &str) -> std::result::Result<(), String> {
    match name_problem(label) {
        None => Ok(()),
        Some(why) => Err(format!(
            "name {} {why}: use letters, digits, '.', '-', '_' (one file name, no '/')",
            escape(label)
        )),
    }
}

/// Checks a VM name at backup time: the same rule as labels (it is a directory in the
/// mount), and no white space at either end (it is matched by people and regexes).
pub fn check_vm_name(name: &str) -> std::result::Result<(), String> {
    if name.trim() != name {
        return Err(format!(
            "VM name {} starts or ends with white space",
            escape(name)
        ));
    }
    match name_problem(name) {
        None => Ok(()),
        Some(why) => Err(format!(
            "VM name {} {why}: use one file name's worth of letters, digits, '.', '-', '_', spaces",
            escape(name)
        )),
    }
}

/// Checks a snapshot tag: free text, but bounded and printable.
pub fn check_tag(tag: &str) -> std::result::Result<(), String> {
    if tag.is_empty() || tag.len() > MAX_NAME_BYTES || tag.chars().any(char::is_control) {
        return Err(format!(
            "tag {} must be 1 to 200 bytes without control characters",
            escape(tag)
        ));
    }
    Ok(())
}

/// A name as one safe path component and printable text: anything [`name_problem`]
/// would refuse is percent-escaped (`/` as `%2F`, control characters as `%0A`, a leading
/// `.` of `.`/`..` as `%2E`), and `%` itself as `%25` so the mapping is one-to-one.
/// Used where a name read from a repository is shown or listed (the mount, listings):
/// VM names were only checked for emptiness before, so old repositories may hold others.
pub fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, c) in name.chars().enumerate() {
        let dot_name = i == 0 && c == '.' && (name == "." || name == "..");
        if c == '/' || c == '%' || c == '\0' || c.is_control() || dot_name {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    if out.is_empty() {
        out.push_str("%00"); // an empty name still needs a visible, unique form
    }
    if out.len() > 255 {
        // Longer than a file name: cut at a character boundary and mark the cut with a
        // hash of the whole, so two long names never collide.
        let tag = &blake3::hash(name.as_bytes()).to_hex()[..16];
        let mut cut = 255 - 1 - tag.len();
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('~');
        out.push_str(tag);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_one_path_component() {
        for ok in [
            "vda",
            "xvda",
            "disk0.qcow2",
            "My Disk",
            "ova.xml",
            ".hidden",
            "a..b",
        ] {
            assert!(check_label(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../../x",
            "/etc/cron.d/job",
            "a/b",
            "a\nb",
            "a\0b",
        ] {
            assert!(check_label(bad).is_err(), "{bad:?}");
        }
        assert!(check_label(&"x".repeat(201)).is_err());
    }

    #[test]
    fn vm_names_also_refuse_outer_white_space() {
        assert!(check_vm_name("web01").is_ok());
        assert!(check_vm_name("Windows Server 2019").is_ok());
        for bad in [" web01", "web01\n", "tenant/../x", "..", ""] {
            assert!(check_vm_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn escape_gives_safe_distinct_components() {
        assert_eq!(escape("web01"), "web01");
        assert_eq!(escape("tenant/../x"), "tenant%2F..%2Fx");
        assert_eq!(escape(".."), "%2E.");
        assert_eq!(escape("a\nb"), "a%0Ab");
        assert_eq!(escape("50%"), "50%25");
        assert_ne!(escape("a/b"), escape("a%2Fb"));
        for n in ["", "/", "..", "\x1b[31m", &"é".repeat(300)] {
            let e = escape(n);
            assert!(
                name_problem(&e).is_none() || e.len() > MAX_NAME_BYTES,
                "{n:?} -> {e:?}"
            );
            assert!(!e.contains('/') && e != "." && e != ".." && e.len() <= 255);
        }
    }
}
