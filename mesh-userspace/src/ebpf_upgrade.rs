//! What lets a successor agent run *its own* programs on the kernel state it takes over, instead
//! of keeping its predecessor's code attached forever: `BPF_LINK_UPDATE` swaps the program behind
//! each running link atomically (the hook never runs without a program, no connect is missed), and
//! a map layout change is bridged by copying the old maps' entries into the new ones before the
//! swap (`migrate`), so enrollments, VIPs and the original destinations of connections in flight
//! survive an upgrade that changes a map.
//!
//! The maps are read and written with raw `bpf(2)` commands on bytes, because the old layout's
//! Rust types no longer exist in the new binary: each layout this version can migrate from says,
//! per map, how an old entry becomes a new one (`converter`).
use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

use mesh_common::{
    MAP_CONFIG, MAP_ENROLLED, MAP_EVENT_STATS, MAP_LOG_LEVEL, MAP_ORIG_BY_COOKIE, MAP_ORIG_BY_TUPLE, MAP_SERVICES,
    MAP_STATS,
};
use thiserror::Error;

// enum bpf_cmd (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;

// enum bpf_map_type: the per-CPU kinds, whose values are one slot per possible CPU.
const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_MAP_TYPE_LRU_PERCPU_HASH: u32 = 10;

/// Why a map's contents could not be carried into the new layout.
#[derive(Debug, Error)]
pub enum MigrateError {
    /// This version has no converter from that layout (a downgrade, or a layout too old).
    #[error("no migration of map {map} from layout {from}")]
    NoConverter {
        /// The layout the entries are in.
        from: u32,
        /// The map.
        map: String,
    },
    /// The old and new maps disagree on what a converter copies unchanged.
    #[error("map {map}: old {old} and new {new} differ in type or key/value size")]
    Shape {
        /// The map.
        map: String,
        /// Type, key and value size of the old map.
        old: String,
        /// The same of the new map.
        new: String,
    },
    /// A bpf(2) command failed.
    #[error("map {map}: {source}")]
    Io {
        /// The map.
        map: String,
        /// The kernel's error.
        source: io::Error,
    },
}

/// `union bpf_attr` as BPF_LINK_UPDATE reads it.
#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
    _rest: [u64; 6],
}

/// Makes `link` run `prog` from now on; the kernel swaps the two in one step, so every run of
/// the hook sees either the old program or the new one.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: prog.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
        _rest: [0; 6],
    };
    sys_bpf(BPF_LINK_UPDATE, &attr).map(drop)
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: every attr passed here is a #[repr(C)], fully initialised prefix of union bpf_attr
    // with a zero tail; the pointers inside it point at buffers that outlive the call and are as
    // large as the map's key/value sizes the kernel reported.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, std::mem::size_of::<T>() as libc::c_uint) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// The part of `struct bpf_map_info` read here.
#[repr(C)]
#[derive(Default)]
struct MapInfo {
    map_type: u32,
    id: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    name: [u8; 16],
}

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
    _rest: [u64; 6],
}

#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
    _rest: [u64; 4],
}

/// A map seen as bytes: keys of `key_size`, values of `value_len` (for per-CPU maps, one 8-byte
/// aligned slot per possible CPU, as the syscalls read and write them).
struct RawMap<'a> {
    fd: BorrowedFd<'a>,
    map_type: u32,
    key_size: usize,
    value_size: usize,
    value_len: usize,
}

impl<'a> RawMap<'a> {
    fn open(fd: BorrowedFd<'a>) -> io::Result<RawMap<'a>> {
        let mut info = MapInfo::default();
        let attr = InfoAttr {
            bpf_fd: fd.as_raw_fd() as u32,
            info_len: std::mem::size_of::<MapInfo>() as u32,
            info: &mut info as *mut MapInfo as u64,
            _rest: [0; 6],
        };
        sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &attr)?;
        let value_size = info.value_size as usize;
        let value_len = match info.map_type {
            BPF_MAP_TYPE_PERCPU_HASH | BPF_MAP_TYPE_PERCPU_ARRAY | BPF_MAP_TYPE_LRU_PERCPU_HASH => {
                let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
                value_size
                    .div_ceil(8)
                    .checked_mul(8)
                    .and_then(|s| s.checked_mul(cpus))
                    .ok_or(io::ErrorKind::InvalidData)?
            }
            _ => value_size,
        };
        Ok(RawMap { fd, map_type: info.map_type, key_size: info.key_size as usize, value_size, value_len })
    }

    fn shape(&self) -> String {
        format!("(type {}, key {} B, value {} B)", self.map_type, self.key_size, self.value_size)
    }

    /// The attr of an element command; a null `key` asks GET_NEXT_KEY for the first key.
    fn elem(&self, key: *const u8, value: *const u8, flags: u64) -> ElemAttr {
        ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            _pad: 0,
            key: key as u64,
            value: value as u64,
            flags,
            _rest: [0; 4],
        }
    }

    /// Every entry now in the map. Entries the programs add or evict meanwhile may or may not be
    /// in it; a key deleted under the walk restarts it from the first key, as the kernel does.
    fn entries(&self) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut key: Option<Vec<u8>> = None;
        let mut next = vec![0u8; self.key_size];
        loop {
            let attr = self.elem(key.as_ref().map_or(std::ptr::null(), |k| k.as_ptr()), next.as_mut_ptr(), 0);
            match sys_bpf(BPF_MAP_GET_NEXT_KEY, &attr) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
                Err(e) => return Err(e),
            }
            let mut value = vec![0u8; self.value_len];
            match sys_bpf(BPF_MAP_LOOKUP_ELEM, &self.elem(next.as_ptr(), value.as_mut_ptr(), 0)) {
                Ok(_) => out.push((next.clone(), value)),
                // Evicted or deleted between the two calls.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
            // Bounded: a map cannot yield more keys than it holds, unless the programs keep
            // replacing them (an LRU map under load); stop rather than chase them forever.
            if out.len() > (1 << 22) {
                return Ok(out);
            }
            key = Some(next.clone());
        }
    }

    fn update(&self, key: &[u8], value: &[u8]) -> io::Result<()> {
        // BPF_ANY: create or replace.
        sys_bpf(BPF_MAP_UPDATE_ELEM, &self.elem(key.as_ptr(), value.as_ptr(), 0)).map(drop)
    }
}

/// How one map's entries become entries of the same map in the new layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Convert {
    /// The bytes mean the same in both layouts: the successor's programs use the map itself.
    Unchanged,
    /// The same keys and values in a map with more entries (an array that grew): copied.
    Grown,
}

/// The maps of layout `from` that this version carries over, and how. Layout 3 only added the
/// cookie map to what a successor receives (a layout-2 agent does not hand it over; its entries
/// live for the microseconds of a handshake and are not carried). Layout 4 grew the settings
/// and counter arrays (sk_msg switch and counters) and added the sockhash maps, which start
/// empty: a predecessor without them put no socket in a sockhash.
fn converter(from: u32, map: &str) -> Option<Convert> {
    const LAYOUT_2: [&str; 7] =
        [MAP_ENROLLED, MAP_SERVICES, MAP_ORIG_BY_TUPLE, MAP_STATS, MAP_EVENT_STATS, MAP_LOG_LEVEL, MAP_CONFIG];
    let carried = match from {
        2 => LAYOUT_2.contains(&map),
        3 => LAYOUT_2.contains(&map) || map == MAP_ORIG_BY_COOKIE,
        _ => false,
    };
    match carried {
        true if map == MAP_STATS || map == MAP_CONFIG => Some(Convert::Grown),
        true => Some(Convert::Unchanged),
        false => None,
    }
}

/// Whether this version can migrate a predecessor's maps of layout `from`.
pub fn can_migrate(from: u32) -> bool {
    converter(from, MAP_ENROLLED).is_some()
}

/// Whether map `name` means the same bytes in layout `from` as in this one: the successor's
/// programs can use the predecessor's map itself.
pub fn is_unchanged(from: u32, name: &str) -> bool {
    converter(from, name) == Some(Convert::Unchanged)
}

/// Whether layout `from` carries map `name` (a map it did not hand over is not).
pub fn can_migrate_map(from: u32, name: &str) -> bool {
    converter(from, name).is_some()
}

/// Copies every entry of `old` (map `name` in layout `from`) into `new`, converted; returns how
/// many were written. Entries already in `new` with the same key are replaced.
pub fn migrate(from: u32, name: &str, old: BorrowedFd<'_>, new: BorrowedFd<'_>) -> Result<usize, MigrateError> {
    let io = |source| MigrateError::Io { map: name.to_owned(), source };
    let convert = converter(from, name).ok_or_else(|| MigrateError::NoConverter { from, map: name.to_owned() })?;
    let (old, new) = (RawMap::open(old).map_err(io)?, RawMap::open(new).map_err(io)?);
    match convert {
        Convert::Unchanged | Convert::Grown => {
            if (old.map_type, old.key_size, old.value_len) != (new.map_type, new.key_size, new.value_len) {
                return Err(MigrateError::Shape { map: name.to_owned(), old: old.shape(), new: new.shape() });
            }
        }
    }
    let entries = old.entries().map_err(io)?;
    for (k, v) in &entries {
        new.update(k, v).map_err(io)?;
    }
    Ok(entries.len())
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    use super::*;

    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_HASH: u32 = 1;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;

    #[repr(C)]
    struct CreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        _rest: [u64; 12],
    }

    /// A kernel map, or None when this process may not create one (not root): the test says so
    /// and, under CI, fails.
    fn create(map_type: u32, key_size: u32, value_size: u32, max_entries: u32) -> Option<OwnedFd> {
        let attr = CreateAttr { map_type, key_size, value_size, max_entries, _rest: [0; 12] };
        match sys_bpf(BPF_MAP_CREATE, &attr) {
            // SAFETY: the kernel just returned this new descriptor.
            Ok(fd) => Some(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
            Err(e) => {
                assert!(std::env::var_os("CI").is_none(), "cannot create a BPF map under CI: {e}");
                eprintln!("skipped: cannot create a BPF map here ({e}); run as root");
                None
            }
        }
    }

    #[test]
    fn migration_copies_every_entry_of_hash_and_per_cpu_maps() {
        let (Some(old), Some(new)) = (create(BPF_MAP_TYPE_HASH, 8, 8, 4096), create(BPF_MAP_TYPE_HASH, 8, 8, 4096))
        else {
            return;
        };
        let raw = RawMap::open(old.as_fd()).expect("info");
        for i in 0u64..1000 {
            raw.update(&i.to_ne_bytes(), &(i * 3).to_ne_bytes()).expect("update");
        }
        assert_eq!(migrate(2, MAP_ENROLLED, old.as_fd(), new.as_fd()).expect("migrate"), 1000);
        let mut got = RawMap::open(new.as_fd()).expect("info").entries().expect("entries");
        got.sort();
        let mut want: Vec<_> =
            (0u64..1000).map(|i| (i.to_ne_bytes().to_vec(), (i * 3).to_ne_bytes().to_vec())).collect();
        want.sort();
        assert_eq!(got, want);

        // Per-CPU counters keep every CPU's slot, into the grown array of layout 4.
        let (Some(old), Some(new)) =
            (create(BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 3), create(BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 6))
        else {
            return;
        };
        let raw = RawMap::open(old.as_fd()).expect("info");
        let slots: Vec<u8> = (0..raw.value_len).map(|b| b as u8).collect();
        raw.update(&1u32.to_ne_bytes(), &slots).expect("update");
        migrate(3, MAP_STATS, old.as_fd(), new.as_fd()).expect("migrate");
        let got = RawMap::open(new.as_fd()).expect("info").entries().expect("entries");
        assert_eq!(got.iter().find(|(k, _)| k == &1u32.to_ne_bytes()).map(|(_, v)| v), Some(&slots));
    }

    #[test]
    fn migration_refuses_unknown_layouts_and_changed_shapes() {
        assert!(can_migrate(2) && can_migrate(3));
        assert!(!can_migrate(1) && !can_migrate(4), "no converter: the caller loads fresh instead");
        // Layout 4 grew the settings and counters (copied, not shared) and added the sockhash
        // maps, which start empty.
        assert!(is_unchanged(3, MAP_SERVICES) && is_unchanged(3, MAP_ORIG_BY_COOKIE));
        assert!(!is_unchanged(3, MAP_STATS) && can_migrate_map(3, MAP_STATS));
        assert!(!is_unchanged(2, MAP_CONFIG) && can_migrate_map(2, MAP_CONFIG));
        assert!(!can_migrate_map(3, mesh_common::MAP_SOCKS) && !can_migrate_map(3, mesh_common::MAP_SK_TCP));
        let (Some(old), Some(new)) = (create(BPF_MAP_TYPE_HASH, 8, 8, 16), create(BPF_MAP_TYPE_HASH, 8, 16, 16)) else {
            return;
        };
        assert!(matches!(migrate(1, MAP_ENROLLED, old.as_fd(), new.as_fd()), Err(MigrateError::NoConverter { .. })));
        assert!(matches!(migrate(2, MAP_ENROLLED, old.as_fd(), new.as_fd()), Err(MigrateError::Shape { .. })));
        let Some(array) = create(BPF_MAP_TYPE_ARRAY, 4, 8, 16) else { return };
        assert!(matches!(migrate(2, MAP_SERVICES, old.as_fd(), array.as_fd()), Err(MigrateError::Shape { .. })));
        // The cookie map is not carried from layout 2 (a layout-2 agent does not hand it over).
        assert!(matches!(
            migrate(2, MAP_ORIG_BY_COOKIE, old.as_fd(), new.as_fd()),
            Err(MigrateError::NoConverter { .. })
        ));
    }
}
