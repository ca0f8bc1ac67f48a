//! Keeps the kernel's identity approvers ([`names::IDENTITIES`] and the [`InodeFilter`] in
//! front of it) equal to a set of files.
//!
//! The filter is an array map updated by a plain copy while programs read it, so a reader may
//! see a mix of two versions. As for the basename filter, every mix stays safe for a file that is
//! in both the old and the new set: the filter is first widened to both sets' bits, then the map
//! changes, then the filter narrows to the new set's bits.

use std::collections::BTreeSet;

use anyhow::{Context as _, Result, ensure};
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData},
};
use picket_probes_common::{FileIdKey, IDENTITY_CAPACITY, InodeFilter, names};

pub use picket_abi::FileId;

/// The identity of a file from the kernel's encoding of its device (`super_block.s_dev`,
/// `major << 20 | minor`) and its inode number.
pub fn file_id_from_kernel(dev: u32, ino: u64) -> FileId {
    FileId {
        dev: libc::makedev(dev >> 20, dev & 0xfffff),
        ino,
    }
}

/// The identity of the file `metadata` describes (`st_dev`, `st_ino`).
pub fn file_id_of(metadata: &std::fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt as _;
    FileId {
        dev: metadata.dev(),
        ino: metadata.ino(),
    }
}

/// The kernel's encoding of the file's device, `None` when the numbers do not fit it (12 bits
/// of major, 20 of minor).
pub fn kernel_dev(file: &FileId) -> Option<u32> {
    let (major, minor) = (libc::major(file.dev), libc::minor(file.dev));
    (major < 1 << 12 && minor < 1 << 20).then_some(major << 20 | minor)
}

fn key(file: &FileId) -> Option<FileIdKey> {
    Some(FileIdKey {
        ino: file.ino,
        dev: kernel_dev(file)?,
        _pad: 0,
    })
}

/// What the kernel holds.
#[derive(Default)]
pub(crate) struct Approved {
    files: BTreeSet<FileId>,
}

impl Approved {
    pub(crate) fn files(&self) -> &BTreeSet<FileId> {
        &self.files
    }

    pub(crate) fn set(&mut self, ebpf: &mut Ebpf, files: &BTreeSet<FileId>) -> Result<()> {
        ensure!(
            files.len() <= IDENTITY_CAPACITY as usize,
            "{} files to watch by identity, at most {IDENTITY_CAPACITY} fit",
            files.len()
        );
        for file in files {
            ensure!(
                key(file).is_some(),
                "device {}:{} of inode {} has no kernel encoding",
                libc::major(file.dev),
                libc::minor(file.dev),
                file.ino
            );
        }
        let wide = filter_of(self.files.union(files));
        set_filter(ebpf, &wide)?;
        let mut map: BpfHashMap<&mut MapData, FileIdKey, u8> = BpfHashMap::try_from(
            ebpf.map_mut(names::IDENTITIES)
                .context("no IDENTITIES map")?,
        )?;
        // Removals first, so that the map never needs room for both sets.
        for file in self.files.difference(files) {
            let key = key(file).expect("checked when it was added");
            if let Err(err) = map.remove(&key) {
                tracing::debug!("removing {file:?} from the identity approvers: {err}");
            }
        }
        for file in files.difference(&self.files) {
            map.insert(&key(file).expect("checked above"), &1, 0)
                .with_context(|| format!("approving {file:?}"))?;
        }
        set_filter(ebpf, &filter_of(files.iter()))?;
        self.files = files.clone();
        Ok(())
    }
}

fn filter_of<'a>(files: impl Iterator<Item = &'a FileId>) -> InodeFilter {
    let mut filter = InodeFilter::EMPTY;
    for file in files {
        filter.insert(file.ino);
        filter.count += 1;
    }
    filter
}

fn set_filter(ebpf: &mut Ebpf, value: &InodeFilter) -> Result<()> {
    let mut map: Array<&mut MapData, InodeFilter> = Array::try_from(
        ebpf.map_mut(names::INODE_FILTER)
            .context("no INODE_FILTER map")?,
    )?;
    map.set(0, value, 0)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_convert_between_kernel_and_user_encodings() {
        // tmpfs-like anonymous device 0:52, a disk 259:3, a large minor.
        for (major, minor) in [(0u32, 52u32), (259, 3), (8, 300_000)] {
            let kernel = major << 20 | minor;
            let id = file_id_from_kernel(kernel, 7);
            assert_eq!(libc::major(id.dev), major);
            assert_eq!(libc::minor(id.dev), minor);
            assert_eq!(kernel_dev(&id), Some(kernel));
        }
        let too_big = FileId {
            dev: libc::makedev(5000, 1),
            ino: 1,
        };
        assert_eq!(kernel_dev(&too_big), None);
    }

    #[test]
    fn the_filter_has_the_bits_of_every_file() {
        let files = [FileId { dev: 1, ino: 5 }, FileId { dev: 1, ino: 70 }];
        let filter = filter_of(files.iter());
        assert_eq!(filter.count, 2);
        assert_eq!(filter.bits[0], 1 << 5);
        assert_eq!(filter.bits[1], 1 << 6);
    }
}
