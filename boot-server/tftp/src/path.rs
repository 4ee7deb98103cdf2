//! The TFTP answer to a refused file name. Resolving names onto files below
//! the served roots is `boot_fs::resolve_path` (shared with HTTP file
//! serving); this module only maps its [`PathError`] onto a TFTP error code.

use boot_fs::PathError;

use crate::packet::error_code;

/// The TFTP error code to answer a refused name with: 1 (file not found) for
/// missing names and non-files, 2 (access violation) for unsafe or unreadable
/// names, 0 for other I/O failures.
pub fn tftp_code(e: &PathError) -> u16 {
    match e {
        PathError::NotFound | PathError::NotAFile => error_code::FILE_NOT_FOUND,
        PathError::InvalidName(_)
        | PathError::Traversal
        | PathError::OutsideRoot
        | PathError::PermissionDenied => error_code::ACCESS_VIOLATION,
        PathError::Io(_) => error_code::NOT_DEFINED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn codes() {
        let cases = [
            (PathError::NotFound, error_code::FILE_NOT_FOUND),
            (PathError::NotAFile, error_code::FILE_NOT_FOUND),
            (PathError::InvalidName("x"), error_code::ACCESS_VIOLATION),
            (PathError::Traversal, error_code::ACCESS_VIOLATION),
            (PathError::OutsideRoot, error_code::ACCESS_VIOLATION),
            (PathError::PermissionDenied, error_code::ACCESS_VIOLATION),
            (
                PathError::Io(std::io::Error::other("x")),
                error_code::NOT_DEFINED,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(tftp_code(&e), code, "{e:?}");
        }
    }

    /// What a client asking for `../x` gets: an access violation.
    #[test]
    fn traversal_is_an_access_violation() {
        let dir = tempfile::tempdir().unwrap();
        let e = boot_fs::resolve_path(&[PathBuf::from(dir.path())], "../x").unwrap_err();
        assert_eq!(tftp_code(&e), error_code::ACCESS_VIOLATION);
        assert_eq!(
            e.to_string(),
            "access violation: '..' is not allowed in file names"
        );
    }
}
