//! Just enough ELF reading to find a section's size.
//!
//! buildman appends the `.rodata` size (as `objdump -h` prints it) to each
//! size line. Reading it from the section headers ourselves saves starting
//! objdump for every build, which is a noticeable part of the per-board
//! overhead on small builds.

use std::path::Path;

fn read_u16(b: &[u8], off: usize, le: bool) -> Option<u64> {
    let s: [u8; 2] = b.get(off..off + 2)?.try_into().ok()?;
    Some(u64::from(if le {
        u16::from_le_bytes(s)
    } else {
        u16::from_be_bytes(s)
    }))
}

fn read_u32(b: &[u8], off: usize, le: bool) -> Option<u64> {
    let s: [u8; 4] = b.get(off..off + 4)?.try_into().ok()?;
    Some(u64::from(if le {
        u32::from_le_bytes(s)
    } else {
        u32::from_be_bytes(s)
    }))
}

fn read_u64(b: &[u8], off: usize, le: bool) -> Option<u64> {
    let s: [u8; 8] = b.get(off..off + 8)?.try_into().ok()?;
    Some(if le {
        u64::from_le_bytes(s)
    } else {
        u64::from_be_bytes(s)
    })
}

/// The size of the section called `name` in the ELF file `data`: `Ok(None)`
/// if there is no such section, `Err(())` if `data` is not an ELF file we
/// can read (the caller then asks objdump).
#[allow(clippy::result_unit_err)]
pub fn section_size(data: &[u8], name: &str) -> Result<Option<u64>, ()> {
    if data.get(0..4) != Some(b"\x7fELF") {
        return Err(());
    }
    let is64 = match data.get(4) {
        Some(1) => false,
        Some(2) => true,
        _ => return Err(()),
    };
    let le = match data.get(5) {
        Some(1) => true,
        Some(2) => false,
        _ => return Err(()),
    };
    let word = |off: usize| {
        if is64 {
            read_u64(data, off, le)
        } else {
            read_u32(data, off, le)
        }
    };
    let (shoff, shentsize, shnum, shstrndx) = if is64 {
        (
            word(0x28),
            read_u16(data, 0x3a, le),
            read_u16(data, 0x3c, le),
            read_u16(data, 0x3e, le),
        )
    } else {
        (
            word(0x20),
            read_u16(data, 0x2e, le),
            read_u16(data, 0x30, le),
            read_u16(data, 0x32, le),
        )
    };
    let (Some(shoff), Some(shentsize), Some(shnum), Some(shstrndx)) =
        (shoff, shentsize, shnum, shstrndx)
    else {
        return Err(());
    };
    // Extended numbering (shnum or shstrndx in section 0) is not needed
    // for firmware images; let objdump handle such files.
    if shnum == 0 || shstrndx >= shnum {
        return Err(());
    }
    let header = |i: u64| -> Option<(u64, u64, u64)> {
        let base = usize::try_from(shoff.checked_add(i.checked_mul(shentsize)?)?).ok()?;
        let name_off = read_u32(data, base, le)?;
        let (offset, size) = if is64 {
            (
                read_u64(data, base + 0x18, le)?,
                read_u64(data, base + 0x20, le)?,
            )
        } else {
            (
                read_u32(data, base + 0x10, le)?,
                read_u32(data, base + 0x14, le)?,
            )
        };
        Some((name_off, offset, size))
    };
    let (_, strtab, _) = header(shstrndx).ok_or(())?;
    for i in 0..shnum {
        let (name_off, _, size) = header(i).ok_or(())?;
        let start = usize::try_from(strtab.checked_add(name_off).ok_or(())?).map_err(|_| ())?;
        let bytes = data.get(start..).ok_or(())?;
        let end = bytes.iter().position(|&c| c == 0).ok_or(())?;
        if &bytes[..end] == name.as_bytes() {
            return Ok(Some(size));
        }
    }
    Ok(None)
}

/// The `.rodata` size of an ELF file formatted as `objdump -h` prints it
/// (at least 8 hex digits), `Some("")` when there is none, `None` when the
/// file cannot be read as ELF.
pub fn rodata_field(path: &Path) -> Option<String> {
    let data = std::fs::read(path).ok()?;
    match section_size(&data, ".rodata") {
        Ok(Some(size)) => Some(format!("{size:08x}")),
        Ok(None) => Some(String::new()),
        Err(()) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_elf() {
        assert_eq!(section_size(b"hello", ".rodata"), Err(()));
    }

    #[test]
    fn matches_objdump_on_a_real_binary() {
        // The test binary itself is an ELF file with a .rodata section.
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let Ok(out) = std::process::Command::new("objdump")
            .arg("-h")
            .arg(&exe)
            .output()
        else {
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let want = crate::outputs::rodata_size(&text).to_string();
        assert_eq!(rodata_field(&exe), Some(want));
    }
}
