//! Transparent huge pages for the two large tables (stream slots and descriptors): the
//! scheduler's second `unsafe` module.
//!
//! At 64K streams and more, a random slot or descriptor is a TLB miss as well as a
//! cache miss on 4 KiB pages. Kernels that give huge pages only on request
//! (`transparent_hugepage/enabled = madvise`, a common default) give them to a range
//! marked `MADV_HUGEPAGE`. Both tables reserve their whole capacity at construction
//! and are touched only later, as streams open and packets arrive, so marking the
//! reserved range right away is enough. A hint: any failure is ignored.

#![allow(unsafe_code)]

/// Below this many bytes a table fits in a few huge pages' worth of 4 KiB pages that
/// the TLB holds anyway: no hint.
const MIN_BYTES: usize = 4 << 20;

/// Asks the kernel to back the reserved capacity of `v` with huge pages.
pub(crate) fn advise<T>(v: &Vec<T>) {
    let bytes = v.capacity().saturating_mul(std::mem::size_of::<T>());
    if bytes < MIN_BYTES {
        return;
    }
    #[cfg(all(target_os = "linux", not(qos_loom)))]
    {
        const PAGE: usize = 4096;
        let start = v.as_ptr() as usize;
        let first = start.next_multiple_of(PAGE);
        let end = (start + bytes) / PAGE * PAGE;
        if end <= first {
            return;
        }
        let at = v.as_ptr().cast::<u8>().wrapping_add(first - start);
        // SAFETY: the range [first, end) lies inside the allocation `v` owns (its
        // reserved capacity, page-aligned inward), which stays mapped while `v` lives
        // and is never moved (the tables never grow past their reservation).
        // MADV_HUGEPAGE changes only how the kernel backs the pages, never their
        // contents or accessibility, so no Rust-visible state changes.
        let _ = unsafe {
            rustix::mm::madvise(
                at.cast_mut().cast::<core::ffi::c_void>(),
                end - first,
                rustix::mm::Advice::LinuxHugepage,
            )
        };
    }
}

#[cfg(all(test, target_os = "linux", not(qos_loom)))]
mod tests {
    use super::*;

    /// The `VmFlags` line of the mapping holding `addr`, from `/proc/self/smaps`.
    fn vm_flags(addr: usize) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ')
                && let Some((a, b)) = range.split_once('-')
                && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                inside = (a..b).contains(&addr);
                continue;
            }
            if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
                return Some(flags.trim().to_string());
            }
        }
        None
    }

    /// A large reservation is marked for huge pages (`hg` in its mapping's flags, as
    /// the kernel reports it); a small one is left alone.
    #[test]
    fn a_large_table_is_marked_for_huge_pages_and_a_small_one_is_not() {
        // A kernel built without transparent huge pages refuses the hint (and the
        // tables then simply use 4 KiB pages): nothing to check there.
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists() {
            eprintln!("no transparent huge pages in this kernel: the hint is a no-op");
            return;
        }
        let big: Vec<[u64; 8]> = Vec::with_capacity(1 << 17); // 8 MiB
        advise(&big);
        let flags = vm_flags(big.as_ptr() as usize + (4 << 20)).expect("mapped");
        assert!(flags.split(' ').any(|f| f == "hg"), "no hg flag: {flags}");
        let small: Vec<[u64; 8]> = Vec::with_capacity(1 << 10); // 64 KiB
        advise(&small);
        let flags = vm_flags(small.as_ptr() as usize).expect("mapped");
        assert!(!flags.split(' ').any(|f| f == "hg"), "{flags}");
    }
}
