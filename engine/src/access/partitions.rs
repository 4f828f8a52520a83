//! Finding the partitions of a backed-up disk (MBR with extended/logical partitions, and
//! GPT), so the mount can offer each one as a file at the right offset and size.
//!
//! Tables are read from the disk itself and are untrusted: entries that overlap the end
//! of the disk are clipped or dropped, EBR chains are bounded, and entry counts capped.

/// One partition: number as Linux counts it (`p1`..`p4` primary, `p5`.. logical, GPT in
/// table order), and its byte range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    pub number: u32,
    pub offset: u64,
    pub len: u64,
}

const SECTOR: u64 = 512;
const MAX_LOGICAL: u32 = 128;
const MAX_GPT_ENTRIES: u32 = 1024;

/// Partitions of a disk of `size` bytes, read through `read(offset, len)` (which returns
/// fewer bytes only at the end of the disk). No table, or an unreadable one, gives none.
pub fn find(size: u64, read: &mut dyn FnMut(u64, usize) -> Option<Vec<u8>>) -> Vec<Partition> {
    let Some(mbr) = read(0, 512).filter(|b| b.len() == 512) else {
        return Vec::new();
    };
    if mbr[510..512] != [0x55, 0xaa] {
        return Vec::new();
    }
    let entries: Vec<(u8, u64, u64)> = (0..4)
        .map(|i| {
            let e = &mbr[446 + i * 16..462 + i * 16];
            let lba = u64::from(u32::from_le_bytes(e[8..12].try_into().expect("4 bytes")));
            let n = u64::from(u32::from_le_bytes(e[12..16].try_into().expect("4 bytes")));
            (e[4], lba, n)
        })
        .collect();
    if entries.iter().any(|(t, _, _)| *t == 0xee) {
        for sector in [SECTOR, 4096] {
            if let Some(parts) = gpt(size, sector, read) {
                return parts;
            }
        }
        return Vec::new();
    }
    let clip = |number: u32, lba: u64, n: u64| -> Option<Partition> {
        let offset = lba.checked_mul(SECTOR)?;
        if n == 0 || offset >= size {
            return None;
        }
        Some(Partition {
            number,
            offset,
            len: (n * SECTOR).min(size - offset),
        })
    };
    let mut out = Vec::new();
    for (i, &(kind, lba, n)) in entries.iter().enumerate() {
        if kind == 0 {
            continue;
        }
        if matches!(kind, 0x05 | 0x0f | 0x85) {
            logical(size, lba, read, &mut out);
            continue;
        }
        out.extend(clip(i as u32 + 1, lba, n));
    }
    out.sort_by_key(|p| p.number);
    out
}

/// Logical partitions: a chain of extended boot records inside the extended partition
/// starting at sector `base`. Each EBR's first entry is relative to that EBR, its second
/// (the next EBR) relative to `base`.
fn logical(
    size: u64,
    base: u64,
    read: &mut dyn FnMut(u64, usize) -> Option<Vec<u8>>,
    out: &mut Vec<Partition>,
) {
    let mut ebr = base;
    for number in 5..5 + MAX_LOGICAL {
        let Some(b) = ebr
            .checked_mul(SECTOR)
            .and_then(|at| read(at, 512))
            .filter(|b| b.len() == 512)
        else {
            return;
        };
        if b[510..512] != [0x55, 0xaa] {
            return;
        }
        let field = |at: usize| {
            u64::from(u32::from_le_bytes(
                b[at..at + 4].try_into().expect("4 bytes"),
            ))
        };
        let (start, n) = (field(446 + 8), field(446 + 12));
        if b[446 + 4] != 0 && n > 0 {
            let offset = ebr.saturating_add(start).saturating_mul(SECTOR);
            if offset < size {
                out.push(Partition {
                    number,
                    offset,
                    len: (n * SECTOR).min(size - offset),
                });
            }
        }
        let next = field(462 + 8);
        if b[462 + 4] == 0 || next == 0 {
            return;
        }
        let following = base.saturating_add(next);
        if following <= ebr {
            return; // a loop or a chain going backwards
        }
        ebr = following;
    }
}

/// GPT with `sector`-byte logical sectors, if its header is there.
fn gpt(
    size: u64,
    sector: u64,
    read: &mut dyn FnMut(u64, usize) -> Option<Vec<u8>>,
) -> Option<Vec<Partition>> {
    let h = read(sector, 92).filter(|b| b.len() == 92)?;
    if &h[..8] != b"EFI PART" {
        return None;
    }
    let le64 = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let le32 = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    let table = le64(&h, 72).checked_mul(sector)?;
    let count = le32(&h, 80).min(MAX_GPT_ENTRIES);
    let entry = le32(&h, 84) as usize;
    if !(128..=4096).contains(&entry) {
        return None;
    }
    let t = read(table, count as usize * entry)?;
    let mut out = Vec::new();
    for i in 0..count as usize {
        let Some(e) = t.get(i * entry..(i + 1) * entry) else {
            break;
        };
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (le64(e, 32), le64(e, 40));
        let Some(offset) = first.checked_mul(sector) else {
            continue;
        };
        if last < first || offset >= size {
            continue;
        }
        // A last LBA of u64::MAX (a forged entry) must not wrap: found by the fuzz target
        // `partitions` (issue 11).
        let len = (last - first)
            .saturating_add(1)
            .saturating_mul(sector)
            .min(size - offset);
        out.push(Partition {
            number: i as u32 + 1,
            offset,
            len,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mbr_entry(disk: &mut [u8], at: usize, kind: u8, lba: u32, n: u32) {
        disk[at + 4] = kind;
        disk[at + 8..at + 12].copy_from_slice(&lba.to_le_bytes());
        disk[at + 12..at + 16].copy_from_slice(&n.to_le_bytes());
    }

    #[test]
    fn mbr_primary_and_logical_partitions() {
        let mut disk = vec![0u8; 4 << 20];
        disk[510] = 0x55;
        disk[511] = 0xaa;
        mbr_entry(&mut disk, 446, 0x83, 2048, 2048); // p1: 1 MiB at 1 MiB
        mbr_entry(&mut disk, 462, 0x05, 4096, 4096); // extended at 2 MiB
                                                     // First EBR at 2 MiB: logical p5 at +1 sector, next EBR at base+2048.
        let e1 = 4096 * 512;
        disk[e1 + 510] = 0x55;
        disk[e1 + 511] = 0xaa;
        mbr_entry(&mut disk, e1 + 446, 0x83, 1, 1000);
        mbr_entry(&mut disk, e1 + 462, 0x05, 2048, 2000);
        let e2 = (4096 + 2048) * 512;
        disk[e2 + 510] = 0x55;
        disk[e2 + 511] = 0xaa;
        mbr_entry(&mut disk, e2 + 446, 0x83, 1, 5000); // runs past the end: clipped
        let size = disk.len() as u64;
        let mut read = |at: u64, n: usize| {
            disk.get(at as usize..(at as usize + n).min(disk.len()))
                .map(<[u8]>::to_vec)
        };
        let parts = find(size, &mut read);
        assert_eq!(
            parts,
            vec![
                Partition {
                    number: 1,
                    offset: 1 << 20,
                    len: 1 << 20
                },
                Partition {
                    number: 5,
                    offset: (4097) * 512,
                    len: 1000 * 512
                },
                Partition {
                    number: 6,
                    offset: (4096 + 2049) * 512,
                    len: size - (4096 + 2049) * 512
                },
            ]
        );
    }

    #[test]
    fn no_signature_or_garbage_gives_no_partitions() {
        let disk = vec![0x55u8; 1 << 16];
        let mut read = |at: u64, n: usize| {
            disk.get(at as usize..(at as usize + n).min(disk.len()))
                .map(<[u8]>::to_vec)
        };
        assert!(find(disk.len() as u64, &mut read).is_empty());
    }

    /// Issue 11, found by the `partitions` fuzz target: a GPT entry whose last LBA is
    /// u64::MAX overflowed `last - first + 1` (a panic in debug builds, a wrapped length
    /// in release ones).
    #[test]
    fn gpt_entry_ending_at_the_largest_lba_is_clipped_not_wrapped() {
        let mut disk = vec![0u8; 64 << 10];
        disk[510] = 0x55;
        disk[511] = 0xaa;
        mbr_entry(&mut disk, 446, 0xee, 1, u32::MAX);
        let h = 512;
        disk[h..h + 8].copy_from_slice(b"EFI PART");
        disk[h + 72..h + 80].copy_from_slice(&2u64.to_le_bytes()); // entries at LBA 2
        disk[h + 80..h + 84].copy_from_slice(&1u32.to_le_bytes());
        disk[h + 84..h + 88].copy_from_slice(&128u32.to_le_bytes());
        let e = 1024;
        disk[e] = 1; // a non-zero type GUID
        disk[e + 32..e + 40].copy_from_slice(&0u64.to_le_bytes());
        disk[e + 40..e + 48].copy_from_slice(&u64::MAX.to_le_bytes());
        let size = disk.len() as u64;
        let mut read = |at: u64, n: usize| {
            disk.get(at as usize..(at as usize + n).min(disk.len()))
                .map(<[u8]>::to_vec)
        };
        let parts = find(size, &mut read);
        assert_eq!(
            parts,
            vec![Partition {
                number: 1,
                offset: 0,
                len: size
            }]
        );
    }
}
