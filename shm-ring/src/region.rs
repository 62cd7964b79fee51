//! The shared region: creating it, attaching to it, and the only place that turns the
//! mapping's raw pointer into references (hence `#[allow(unsafe_code)]` on this module).
//!
//! Normal builds map a sealed memfd with `memmap2::MmapRaw`. Loom builds keep the header
//! and the slots on the heap, because loom atomics cannot live in a byte layout.

use std::sync::Arc;

use crate::consumer::Consumer;
use crate::error::RegionError;
use crate::layout::{Geometry, Header, RingConfig};
use crate::producer::Producer;

#[cfg(not(qos_loom))]
pub(crate) use mapped::Shared;

#[cfg(qos_loom)]
pub(crate) use heap::Shared;

/// A ring region not yet split into its halves.
///
/// Create one with [`ShmRegion::create`], hand its [`ShmRegion::proc_path`] (or its file
/// descriptor) to the peer process, which attaches with [`ShmRegion::open`] or
/// [`ShmRegion::from_fd`]; then each side takes its half with
/// [`ShmRegion::into_producer`] or [`ShmRegion::into_consumer`] (or both, in-process,
/// with [`ShmRegion::split`]). A side can be taken once per region, ever.
#[derive(Debug)]
pub struct ShmRegion {
    shared: Arc<Shared>,
}

impl ShmRegion {
    /// Shape of the ring, as validated at creation or attach time.
    pub fn config(&self) -> RingConfig {
        self.shared.geometry().config
    }

    /// Takes the producer side.
    ///
    /// # Errors
    /// [`RegionError::RoleTaken`] if some handle, in any process, took it before;
    /// [`RegionError::Corrupt`] if the indices in the region are inconsistent.
    pub fn into_producer(self) -> Result<Producer, RegionError> {
        Producer::claim(self.shared)
    }

    /// Takes the consumer side.
    ///
    /// # Errors
    /// As [`ShmRegion::into_producer`].
    pub fn into_consumer(self) -> Result<Consumer, RegionError> {
        Consumer::claim(self.shared)
    }

    /// Takes both sides, for a ring used inside one process (or before handing one half
    /// to a thread). The halves share this mapping.
    ///
    /// # Errors
    /// As [`ShmRegion::into_producer`].
    pub fn split(self) -> Result<(Producer, Consumer), RegionError> {
        let producer = Producer::claim(Arc::clone(&self.shared))?;
        let consumer = Consumer::claim(self.shared)?;
        Ok((producer, consumer))
    }

    /// Re-reads the header's write-once fields and checks them against the values
    /// validated at attach time. The ring itself never re-reads them (so a rewrite cannot
    /// change its bounds); this only reports tampering.
    ///
    /// # Errors
    /// The first field that differs, as at attach time.
    pub fn verify_header(&self) -> Result<(), RegionError> {
        self.shared.verify_header()
    }
}

/// Creates a ring of the given shape with both halves, in one process: a sealed anonymous
/// memfd in normal builds, a heap region under `cfg(qos_loom)`.
///
/// # Errors
/// An invalid `config`, or a failed system call.
pub fn pair(config: RingConfig) -> Result<(Producer, Consumer), RegionError> {
    ShmRegion::create(config)?.split()
}

/// Checks the write-once fields against the geometry this side validated.
fn check_fixed(header: &Header, geom: &Geometry) -> Result<(), RegionError> {
    use crate::sync::Ordering::Relaxed;
    // Relaxed throughout: the write-once fields were published before the region was
    // handed over (partner: the Release store of `magic` in `init_header`, ordered for
    // the attacher by the OS hand-off of the fd); re-reads only look for tampering.
    let fixed = &header.fixed;
    let found = RawHeader {
        magic: fixed.magic.load(Relaxed),
        version: fixed.version.load(Relaxed),
        header_len: fixed.header_len.load(Relaxed),
        capacity: fixed.capacity.load(Relaxed),
        slot_size: fixed.slot_size.load(Relaxed),
        region_len: fixed.region_len.load(Relaxed),
    };
    let geom_now = found.validate(None)?;
    if geom_now != *geom {
        let (field, found, expected) = if geom_now.config.capacity != geom.config.capacity {
            ("capacity", geom_now.config.capacity, geom.config.capacity)
        } else {
            (
                "slot_size",
                geom_now.config.slot_size,
                geom.config.slot_size,
            )
        };
        return Err(RegionError::ConfigMismatch {
            field,
            found,
            expected,
        });
    }
    Ok(())
}

/// Writes the write-once fields of a fresh, zeroed header; `magic` goes last.
fn init_header(header: &Header, config: RingConfig) {
    use crate::layout::{HEADER_LEN, MAGIC, VERSION};
    use crate::sync::Ordering::{Relaxed, Release};
    let fixed = &header.fixed;
    fixed.version.store(VERSION, Relaxed);
    fixed.header_len.store(HEADER_LEN as u32, Relaxed);
    fixed.capacity.store(config.capacity, Relaxed);
    fixed.slot_size.store(config.slot_size, Relaxed);
    fixed.region_len.store(config.region_len(), Relaxed);
    // Release: publishes the fields above; partner: the Acquire-equivalent OS hand-off
    // (attachers read the header with `pread` after receiving the fd) and the Relaxed
    // re-reads of `check_fixed`, which only look for tampering.
    fixed.magic.store(MAGIC, Release);
}

/// The write-once header fields as read from an untrusted region.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawHeader {
    pub(crate) magic: u64,
    pub(crate) version: u32,
    pub(crate) header_len: u32,
    pub(crate) capacity: u32,
    pub(crate) slot_size: u32,
    pub(crate) region_len: u64,
}

impl RawHeader {
    /// Validates every field (and, if given, the shape the attacher expects).
    pub(crate) fn validate(&self, expected: Option<RingConfig>) -> Result<Geometry, RegionError> {
        use crate::layout::{HEADER_LEN, MAGIC, VERSION};
        if self.magic != MAGIC {
            return Err(RegionError::BadMagic {
                found: self.magic,
                expected: MAGIC,
            });
        }
        if self.version != VERSION {
            return Err(RegionError::BadVersion {
                found: self.version,
                expected: VERSION,
            });
        }
        if self.header_len != HEADER_LEN as u32 {
            return Err(RegionError::BadHeaderLen {
                found: self.header_len,
                expected: HEADER_LEN as u32,
            });
        }
        let config = RingConfig {
            capacity: self.capacity,
            slot_size: self.slot_size,
        };
        let geom = Geometry::new(config)?;
        if self.region_len != config.region_len() {
            return Err(RegionError::BadRegionLen {
                found: self.region_len,
                expected: config.region_len(),
            });
        }
        if let Some(want) = expected {
            if want.capacity != config.capacity {
                return Err(RegionError::ConfigMismatch {
                    field: "capacity",
                    found: config.capacity,
                    expected: want.capacity,
                });
            }
            if want.slot_size != config.slot_size {
                return Err(RegionError::ConfigMismatch {
                    field: "slot_size",
                    found: config.slot_size,
                    expected: want.slot_size,
                });
            }
        }
        Ok(geom)
    }

    /// Decodes the first 32 header bytes (little-endian, see [`crate::layout`]).
    #[cfg(not(qos_loom))]
    fn from_bytes(b: &[u8; 32]) -> Self {
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
        use crate::layout::*;
        Self {
            magic: u64_at(OFFSET_MAGIC),
            version: u32_at(OFFSET_VERSION),
            header_len: u32_at(OFFSET_HEADER_LEN),
            capacity: u32_at(OFFSET_CAPACITY),
            slot_size: u32_at(OFFSET_SLOT_SIZE),
            region_len: u64_at(OFFSET_REGION_LEN),
        }
    }
}

/// Backing store for normal builds: a memfd mapped with `MmapRaw`.
#[cfg(not(qos_loom))]
mod mapped {
    use std::fs::File;
    use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use memmap2::{MmapOptions, MmapRaw};
    use rustix::fs::{MemfdFlags, SealFlags};

    use super::{RawHeader, ShmRegion, check_fixed, init_header};
    use crate::error::RegionError;
    use crate::layout::{Geometry, HEADER_LEN, Header, RingConfig};
    use crate::sync::DataCell;

    fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> RegionError {
        move |source| RegionError::Io { op, source }
    }

    fn errno(op: &'static str) -> impl FnOnce(rustix::io::Errno) -> RegionError {
        move |e| RegionError::Io {
            op,
            source: e.into(),
        }
    }

    /// A mapped region and the geometry validated for it.
    ///
    /// Invariant (checked in [`Shared::map`], relied on by every accessor): `map` is at
    /// least `geom.config.region_len()` bytes long and its base is 128-byte aligned; the
    /// file behind it is sealed against shrinking (or was created by us and sealed), so
    /// every byte of that range stays backed for the life of the mapping.
    #[derive(Debug)]
    pub(crate) struct Shared {
        map: MmapRaw,
        fd: OwnedFd,
        geom: Geometry,
    }

    impl Shared {
        fn map(fd: OwnedFd, geom: Geometry) -> Result<Self, RegionError> {
            let len = geom.config.region_len();
            let len_usize = usize::try_from(len).map_err(|_| RegionError::RegionTooLarge {
                len,
                max: crate::layout::MAX_REGION_LEN,
            })?;
            let file = File::from(fd);
            let map = MmapOptions::new()
                .len(len_usize)
                .map_raw(&file)
                .map_err(io("mmap"))?;
            if map.len() < len_usize || map.as_ptr().align_offset(128) != 0 {
                // mmap returns page-aligned mappings of the asked length; anything else
                // means the platform broke its contract and we refuse to go on.
                return Err(RegionError::Io {
                    op: "mmap",
                    source: std::io::Error::other("mapping shorter or less aligned than asked"),
                });
            }
            Ok(Self {
                map,
                fd: OwnedFd::from(file),
                geom,
            })
        }

        /// The validated geometry.
        pub(crate) fn geometry(&self) -> Geometry {
            self.geom
        }

        /// The header, viewed in place.
        pub(crate) fn header(&self) -> &Header {
            let ptr = self.map.as_ptr().cast::<Header>();
            // SAFETY: by the struct invariant the mapping is >= HEADER_LEN bytes, 128-byte
            // aligned (Header's alignment) and stays mapped and backed while `self` lives.
            // `Header` is made only of atomics, valid for every bit pattern and built for
            // shared mutation, so concurrent writes by the peer are not UB; we never make
            // a `&mut` to it.
            unsafe { &*ptr }
        }

        /// All slot words, viewed in place.
        pub(crate) fn slots(&self) -> &[DataCell] {
            let ptr = self
                .map
                .as_ptr()
                .wrapping_add(HEADER_LEN)
                .cast::<DataCell>();
            // SAFETY: by the struct invariant the mapping holds HEADER_LEN +
            // total_words * 8 bytes; the slot area starts 384 bytes into a page-aligned
            // mapping, so it is 8-byte aligned for `DataCell` (an `AtomicU64`), which is
            // valid for every bit pattern and tolerates concurrent writes by the peer.
            unsafe { std::slice::from_raw_parts(ptr, self.geom.total_words()) }
        }

        pub(crate) fn verify_header(&self) -> Result<(), RegionError> {
            check_fixed(self.header(), &self.geom)
        }
    }

    impl ShmRegion {
        /// Creates a ring in a new anonymous memfd, sized for `config` and sealed against
        /// shrinking, growing and further sealing.
        ///
        /// # Errors
        /// An invalid `config` (named field and value) or a failed system call.
        pub fn create(config: RingConfig) -> Result<ShmRegion, RegionError> {
            let geom = Geometry::new(config)?;
            let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
            let fd =
                rustix::fs::memfd_create("qos-shm-ring", flags).map_err(errno("memfd_create"))?;
            rustix::fs::ftruncate(&fd, config.region_len()).map_err(errno("ftruncate"))?;
            let seals = SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
            rustix::fs::fcntl_add_seals(&fd, seals).map_err(errno("fcntl(F_ADD_SEALS)"))?;
            let shared = Shared::map(fd, geom)?;
            init_header(shared.header(), config);
            Ok(ShmRegion {
                shared: Arc::new(shared),
            })
        }

        /// Attaches to a ring by path, typically another process's
        /// [`ShmRegion::proc_path`]. See [`ShmRegion::from_fd`].
        ///
        /// # Errors
        /// As [`ShmRegion::from_fd`], plus a failed `open`.
        pub fn open(path: &Path, expected: Option<RingConfig>) -> Result<ShmRegion, RegionError> {
            let file = File::options()
                .read(true)
                .write(true)
                .open(path)
                .map_err(io("open"))?;
            Self::from_fd(OwnedFd::from(file), expected)
        }

        /// Attaches to a ring through a file descriptor (e.g. received over a Unix
        /// socket). The region is untrusted: its size must be sealed against shrinking,
        /// and every header field is validated before anything is mapped. If `expected`
        /// is given, the ring must also have exactly that shape.
        ///
        /// # Errors
        /// [`RegionError::NotSealed`], [`RegionError::HugePages`],
        /// [`RegionError::TooSmall`], [`RegionError::BadMagic`],
        /// [`RegionError::BadVersion`], [`RegionError::BadHeaderLen`],
        /// [`RegionError::BadCapacity`], [`RegionError::BadSlotSize`],
        /// [`RegionError::BadRegionLen`], [`RegionError::ConfigMismatch`], or a failed
        /// system call.
        pub fn from_fd(
            fd: OwnedFd,
            expected: Option<RingConfig>,
        ) -> Result<ShmRegion, RegionError> {
            // Files that cannot carry seals (EINVAL) count as unsealed.
            let seals = rustix::fs::fcntl_get_seals(&fd).unwrap_or(SealFlags::empty());
            if !seals.contains(SealFlags::SHRINK) {
                return Err(RegionError::NotSealed {
                    found: seals.bits(),
                });
            }
            // hugetlbfs: a hole punched by the owner is refilled on access from the
            // host's huge-page pool, or faults with SIGBUS when the pool is empty.
            // Compared in 32 bits: `f_type` is a signed 32-bit field on some targets,
            // where the magic reads negative.
            const HUGETLBFS_MAGIC: u32 = 0x9584_58f6;
            let fs = rustix::fs::fstatfs(&fd).map_err(errno("fstatfs"))?;
            if fs.f_type as u32 == HUGETLBFS_MAGIC {
                return Err(RegionError::HugePages);
            }
            let stat = rustix::fs::fstat(&fd).map_err(errno("fstat"))?;
            let file_len = u64::try_from(stat.st_size).unwrap_or(0);
            if file_len < HEADER_LEN as u64 {
                return Err(RegionError::TooSmall {
                    len: file_len,
                    need: HEADER_LEN as u64,
                });
            }
            // Read the header with pread, not through a mapping: the values we validate
            // are the values we keep, whatever the peer writes afterwards.
            let file = File::from(fd);
            let mut bytes = [0u8; 32];
            file.read_exact_at(&mut bytes, 0).map_err(io("pread"))?;
            let geom = RawHeader::from_bytes(&bytes).validate(expected)?;
            let need = geom.config.region_len();
            if file_len < need {
                return Err(RegionError::TooSmall {
                    len: file_len,
                    need,
                });
            }
            let shared = Shared::map(OwnedFd::from(file), geom)?;
            Ok(ShmRegion {
                shared: Arc::new(shared),
            })
        }

        /// The region's file descriptor, to pass to a peer (e.g. with `SCM_RIGHTS`).
        pub fn as_fd(&self) -> BorrowedFd<'_> {
            self.shared.fd.as_fd()
        }

        /// A path another process of the same user can [`ShmRegion::open`] while this
        /// process keeps the region: `/proc/<pid>/fd/<fd>`.
        pub fn proc_path(&self) -> PathBuf {
            use std::os::fd::AsRawFd;
            let pid = rustix::process::getpid().as_raw_nonzero();
            PathBuf::from(format!("/proc/{pid}/fd/{}", self.shared.fd.as_raw_fd()))
        }
    }
}

/// Backing store for loom builds: the header and slots on the heap.
#[cfg(qos_loom)]
mod heap {
    use std::sync::Arc;

    use super::{ShmRegion, check_fixed, init_header};
    use crate::error::RegionError;
    use crate::layout::{Geometry, Header, RingConfig};
    use crate::sync::DataCell;

    /// Heap-backed stand-in for the mapped region (same accessors).
    pub(crate) struct Shared {
        header: Box<Header>,
        slots: Box<[DataCell]>,
        geom: Geometry,
    }

    impl std::fmt::Debug for Shared {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Shared")
                .field("geom", &self.geom)
                .finish_non_exhaustive()
        }
    }

    // SAFETY: the header is made of loom atomics (Sync); the slot words are loom
    // `UnsafeCell`s whose every access goes through loom's `with`/`with_mut`, which check
    // at run time that the ring protocol orders all conflicting accesses; proving that is
    // the purpose of the loom models.
    unsafe impl Sync for Shared {}

    impl Shared {
        pub(crate) fn geometry(&self) -> Geometry {
            self.geom
        }

        pub(crate) fn header(&self) -> &Header {
            &self.header
        }

        pub(crate) fn slots(&self) -> &[DataCell] {
            &self.slots
        }

        pub(crate) fn verify_header(&self) -> Result<(), RegionError> {
            check_fixed(self.header(), &self.geom)
        }
    }

    impl ShmRegion {
        /// Creates a heap-backed ring (loom builds only).
        ///
        /// # Errors
        /// An invalid `config`.
        pub fn create(config: RingConfig) -> Result<ShmRegion, RegionError> {
            let geom = Geometry::new(config)?;
            let header = Box::new(Header::new_zeroed());
            init_header(&header, config);
            let slots = (0..geom.total_words()).map(|_| DataCell::new()).collect();
            Ok(ShmRegion {
                shared: Arc::new(Shared {
                    header,
                    slots,
                    geom,
                }),
            })
        }
    }
}
