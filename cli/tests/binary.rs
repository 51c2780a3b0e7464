//! How the executable is linked (cli/build.rs).

use std::io::Read;

/// Position-dependent (ELF type `ET_EXEC`) on x86-64 Linux, so that starting it applies no
/// relocations; built with `EXPFLOW_PIE=1` it stays a position-independent `ET_DYN`.
#[test]
#[cfg(all(target_os = "linux", target_arch = "x86_64", target_env = "gnu"))]
fn the_executable_is_linked_position_dependent() {
    let mut header = [0u8; 18];
    std::fs::File::open(env!("CARGO_BIN_EXE_expflow"))
        .and_then(|mut f| f.read_exact(&mut header))
        .unwrap();
    assert_eq!(&header[..4], b"\x7fELF");
    let e_type = u16::from_le_bytes([header[16], header[17]]);
    let expected = if option_env!("EXPFLOW_PIE") == Some("1") {
        3
    } else {
        2
    };
    assert_eq!(e_type, expected, "ELF type 2 is ET_EXEC, 3 is ET_DYN (PIE)");
}
