//! boot-fs: mapping a client-requested file name onto a file below one of the
//! served roots, shared by every protocol that serves files (TFTP in
//! `boot-tftp`, HTTP in `boot-server`) so they all refuse the same names.
//!
//! The name is normalised (`\` -> `/`, leading `/` stripped, `.` and empty
//! components dropped); `..` components and NUL bytes are refused outright, and
//! the result is canonicalised so that a symlink leading out of its root is
//! refused too. An absolute request like `/etc/passwd` is looked up *inside*
//! the roots (as `etc/passwd`), never on the host.
//!
//! [`range`] answers an HTTP `Range` header for such a file.

pub mod range;

use std::io;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a requested name could not be served. The texts are what clients
/// see (TFTP error messages), so they stay stable.
#[derive(Debug, Error)]
pub enum PathError {
    /// The name is unusable as such (contains NUL, or has no component left
    /// after normalisation); the text says which.
    #[error("invalid file name: {0}")]
    InvalidName(&'static str),
    /// The name has a `..` component (refused before touching the disk).
    #[error("access violation: '..' is not allowed in file names")]
    Traversal,
    /// The name exists in a root but resolves, through a symlink, outside it.
    #[error("access violation: file resolves outside the served directories")]
    OutsideRoot,
    /// No root holds the name.
    #[error("file not found")]
    NotFound,
    /// The name resolves to a directory or special file.
    #[error("not a regular file")]
    NotAFile,
    /// A root holds the name but the server may not read it.
    #[error("access violation: permission denied")]
    PermissionDenied,
    /// Any other I/O failure while resolving, with its cause.
    #[error("I/O error resolving file: {0}")]
    Io(#[source] io::Error),
}

/// Normalises a requested name into a relative path of plain components.
pub fn normalise(requested: &str) -> Result<PathBuf, PathError> {
    if requested.contains('\0') {
        return Err(PathError::InvalidName("contains NUL"));
    }
    let mut rel = PathBuf::new();
    for comp in requested.split(['/', '\\']) {
        match comp {
            "" | "." => {}
            ".." => return Err(PathError::Traversal),
            c => rel.push(c),
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(PathError::InvalidName("empty path"));
    }
    Ok(rel)
}

/// Resolves `requested` against `roots` (searched in order) and returns the
/// canonical path of a regular file inside the first root that has it.
///
/// A name that exists in a root but resolves (through symlinks) outside that
/// root is refused with [`PathError::OutsideRoot`]; later roots are not tried,
/// so a bad link is never silently shadowed.
pub fn resolve_path(roots: &[PathBuf], requested: &str) -> Result<PathBuf, PathError> {
    let rel = normalise(requested)?;
    let mut saw_denied = false;
    for root in roots {
        let Ok(root) = root.canonicalize() else {
            continue;
        };
        let candidate = root.join(&rel);
        match candidate.canonicalize() {
            Ok(real) => {
                if !real.starts_with(&root) {
                    return Err(PathError::OutsideRoot);
                }
                return check_file(&real).map(|()| real);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => saw_denied = true,
            // ENOTDIR (a component is a file) behaves like "not found".
            Err(e) if e.raw_os_error() == Some(20) => continue,
            Err(e) => return Err(PathError::Io(e)),
        }
    }
    if saw_denied {
        Err(PathError::PermissionDenied)
    } else {
        Err(PathError::NotFound)
    }
}

/// Files the server's own configuration names (the iPXE loaders), served by
/// that name even when it is a symlink leading out of its root. The no-escape
/// rule guards the names *clients* choose; these names the admin chose, as
/// with Debian's `/usr/lib/ipxe/ipxe.efi` → `/boot/ipxe.efi`. Only the exact
/// configured names are pinned, and the link is followed at each request (a
/// package upgrade that moves the target is seen); the target must be a
/// regular file.
#[derive(Debug, Clone, Default)]
pub struct Pinned(Vec<(PathBuf, PathBuf)>);

impl Pinned {
    /// Pins each of `names` (relative to `root`); a name that does not
    /// normalise is skipped.
    pub fn new<'a>(root: &Path, names: impl IntoIterator<Item = &'a str>) -> Pinned {
        Pinned(
            names
                .into_iter()
                .filter_map(|n| normalise(n).ok())
                .map(|rel| {
                    let full = root.join(&rel);
                    (rel, full)
                })
                .collect(),
        )
    }

    /// The canonical file behind a pinned name, when `requested` is one.
    fn lookup(&self, requested: &str) -> Option<Result<PathBuf, PathError>> {
        let rel = normalise(requested).ok()?;
        let (_, full) = self.0.iter().find(|(r, _)| *r == rel)?;
        Some(match full.canonicalize() {
            Ok(real) => check_file(&real).map(|()| real),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(PathError::NotFound),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                Err(PathError::PermissionDenied)
            }
            Err(e) => Err(PathError::Io(e)),
        })
    }
}

/// [`resolve_path`], except that a name in `pinned` is served from its
/// configured file (see [`Pinned`]).
pub fn resolve_pinned(
    pinned: &Pinned,
    roots: &[PathBuf],
    requested: &str,
) -> Result<PathBuf, PathError> {
    match pinned.lookup(requested) {
        Some(found) => found,
        None => resolve_path(roots, requested),
    }
}

fn check_file(real: &Path) -> Result<(), PathError> {
    match std::fs::metadata(real) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(PathError::NotAFile),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(PathError::PermissionDenied),
        Err(e) => Err(PathError::Io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    struct Tree {
        _dir: tempfile::TempDir,
        base: PathBuf,
    }

    /// base/root1/{a.txt, sub/b.txt, out -> ../secret, inlink -> sub/b.txt, d/}
    /// base/root2/{a.txt, only2.txt}
    /// base/secret
    fn tree() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        fs::create_dir_all(base.join("root1/sub")).unwrap();
        fs::create_dir_all(base.join("root1/d")).unwrap();
        fs::create_dir_all(base.join("root2")).unwrap();
        fs::write(base.join("root1/a.txt"), "1").unwrap();
        fs::write(base.join("root1/sub/b.txt"), "b").unwrap();
        fs::write(base.join("root2/a.txt"), "2").unwrap();
        fs::write(base.join("root2/only2.txt"), "o").unwrap();
        fs::write(base.join("secret"), "s").unwrap();
        std::os::unix::fs::symlink("../secret", base.join("root1/out")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", base.join("root1/abs")).unwrap();
        std::os::unix::fs::symlink("sub/b.txt", base.join("root1/inlink")).unwrap();
        Tree { _dir: dir, base }
    }

    fn roots(t: &Tree) -> Vec<PathBuf> {
        vec![t.base.join("root1"), t.base.join("root2")]
    }

    #[test]
    fn finds_in_first_root_then_second() {
        let t = tree();
        let r = roots(&t);
        assert_eq!(
            resolve_path(&r, "a.txt").unwrap(),
            t.base.join("root1/a.txt")
        );
        assert_eq!(
            resolve_path(&r, "only2.txt").unwrap(),
            t.base.join("root2/only2.txt")
        );
        assert_eq!(
            resolve_path(&r, "sub/b.txt").unwrap(),
            t.base.join("root1/sub/b.txt")
        );
        assert_eq!(
            resolve_path(&r, "./sub//b.txt").unwrap(),
            t.base.join("root1/sub/b.txt")
        );
    }

    #[test]
    fn leading_slash_and_backslash_stay_inside() {
        let t = tree();
        let r = roots(&t);
        assert_eq!(
            resolve_path(&r, "/a.txt").unwrap(),
            t.base.join("root1/a.txt")
        );
        assert_eq!(
            resolve_path(&r, "\\sub\\b.txt").unwrap(),
            t.base.join("root1/sub/b.txt")
        );
        // An absolute host path is looked up relative to the roots: not found there.
        assert!(matches!(
            resolve_path(&r, "/etc/passwd"),
            Err(PathError::NotFound)
        ));
    }

    #[test]
    fn traversal_refused() {
        let t = tree();
        let r = roots(&t);
        for name in [
            "../etc/passwd",
            "a/../../x",
            "sub/../a.txt",
            "..",
            "..\\secret",
            "sub\\..\\..\\secret",
        ] {
            let e = resolve_path(&r, name).unwrap_err();
            assert!(matches!(e, PathError::Traversal), "{name}: {e:?}");
        }
    }

    #[test]
    fn nul_and_empty_refused() {
        let t = tree();
        let r = roots(&t);
        assert!(matches!(
            resolve_path(&r, "a.txt\0.png"),
            Err(PathError::InvalidName(_))
        ));
        assert!(matches!(
            resolve_path(&r, "/"),
            Err(PathError::InvalidName(_))
        ));
        assert!(matches!(
            resolve_path(&r, ""),
            Err(PathError::InvalidName(_))
        ));
    }

    #[test]
    fn symlinks_out_of_root_refused_inside_allowed() {
        let t = tree();
        let r = roots(&t);
        let e = resolve_path(&r, "out").unwrap_err();
        assert!(matches!(e, PathError::OutsideRoot), "{e:?}");
        assert!(matches!(
            resolve_path(&r, "abs"),
            Err(PathError::OutsideRoot)
        ));
        assert_eq!(
            resolve_path(&r, "inlink").unwrap(),
            t.base.join("root1/sub/b.txt")
        );
    }

    #[test]
    fn pinned_names_follow_their_link_and_nothing_else_does() {
        let t = tree();
        let r = roots(&t);
        let pinned = Pinned::new(&t.base.join("root1"), ["out", "missing"]);
        // The configured name is served through its link out of the root.
        assert_eq!(
            resolve_pinned(&pinned, &r, "/out").unwrap(),
            t.base.join("secret")
        );
        // Other names keep the rule; an absent pinned file is "not found".
        assert!(matches!(
            resolve_pinned(&pinned, &r, "abs"),
            Err(PathError::OutsideRoot)
        ));
        assert!(matches!(
            resolve_pinned(&pinned, &r, "missing"),
            Err(PathError::NotFound)
        ));
        assert!(matches!(
            resolve_pinned(&pinned, &r, "out/../abs"),
            Err(PathError::Traversal)
        ));
        assert_eq!(
            resolve_pinned(&pinned, &r, "a.txt").unwrap(),
            t.base.join("root1/a.txt")
        );
    }

    #[test]
    fn missing_and_directories() {
        let t = tree();
        let r = roots(&t);
        let e = resolve_path(&r, "nope").unwrap_err();
        assert!(matches!(e, PathError::NotFound));
        assert!(matches!(resolve_path(&r, "d"), Err(PathError::NotAFile)));
        assert!(matches!(
            resolve_path(&r, "a.txt/x"),
            Err(PathError::NotFound)
        ));
        // Missing roots are skipped.
        let r2 = vec![t.base.join("missing"), t.base.join("root2")];
        assert_eq!(
            resolve_path(&r2, "a.txt").unwrap(),
            t.base.join("root2/a.txt")
        );
    }
}
