//! Where a helper's program is, and whether it may run: an app's helper runs only a program
//! inside the plug-in directory (no `..`, no symlink out); an admin-installed helper may also
//! name an absolute path. Checked when a spec is added and again at every start.

use std::{
    io,
    os::unix::fs::PermissionsExt,
    path::{Component, Path, PathBuf},
};

use crate::Error;

/// The canonical path of `program` if it may run: relative paths are resolved inside
/// `plugin_dir` and must stay inside it once symlinks are followed; absolute paths only when
/// `absolute_allowed` (admin-installed specs). The result is a regular file with an execute
/// bit.
pub(crate) fn resolve(
    program: &str,
    absolute_allowed: bool,
    plugin_dir: &Path,
) -> Result<PathBuf, Error> {
    let path = Path::new(program);
    let outside = || Error::ProgramOutside {
        program: program.to_owned(),
        dir: plugin_dir.display().to_string(),
    };
    let not_found = |dir: &Path| Error::ProgramNotFound {
        program: program.to_owned(),
        dir: dir.display().to_string(),
    };
    let canonical = if path.is_absolute() {
        if !absolute_allowed {
            return Err(outside());
        }
        let dir = path.parent().unwrap_or(Path::new("/"));
        canonicalize(program, path, || not_found(dir))?
    } else {
        if path
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(outside());
        }
        let dir = plugin_dir
            .canonicalize()
            .map_err(|_| not_found(plugin_dir))?;
        let canonical = canonicalize(program, &dir.join(path), || not_found(plugin_dir))?;
        if !canonical.starts_with(&dir) {
            return Err(outside());
        }
        canonical
    };
    let not_runnable = |why: String| Error::ProgramNotRunnable {
        program: program.to_owned(),
        path: canonical.display().to_string(),
        why,
    };
    let meta =
        std::fs::metadata(&canonical).map_err(|e| not_runnable(format!("is unreadable: {e}")))?;
    if !meta.is_file() {
        return Err(not_runnable("is not a regular file".into()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(not_runnable("is not executable (chmod +x it)".into()));
    }
    Ok(canonical)
}

fn canonicalize(
    program: &str,
    path: &Path,
    not_found: impl FnOnce() -> Error,
) -> Result<PathBuf, Error> {
    path.canonicalize().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => not_found(),
        _ => Error::ProgramNotRunnable {
            program: program.to_owned(),
            path: path.display().to_string(),
            why: format!("cannot be resolved: {e}"),
        },
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use p2pos_kernel::{ErrorCode, ServiceError};

    use super::*;

    fn code(r: Result<PathBuf, Error>) -> ErrorCode {
        ServiceError::from(r.expect_err("must be refused")).code
    }

    fn executable(path: &Path) {
        std::fs::write(path, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    struct Dirs {
        _root: tempfile::TempDir,
        plugins: PathBuf,
        outside: PathBuf,
    }

    fn dirs() -> Dirs {
        let root = tempfile::tempdir().unwrap();
        let plugins = root.path().join("plugins");
        let outside = root.path().join("outside");
        std::fs::create_dir_all(plugins.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        executable(&plugins.join("voice"));
        executable(&plugins.join("sub/tool"));
        executable(&outside.join("evil"));
        std::fs::write(plugins.join("plain"), "data").unwrap();
        symlink(outside.join("evil"), plugins.join("link-out")).unwrap();
        symlink(plugins.join("voice"), plugins.join("link-in")).unwrap();
        symlink("sub/tool", plugins.join("relative-in")).unwrap();
        symlink(&outside, plugins.join("dir-out")).unwrap();
        Dirs {
            _root: root,
            plugins,
            outside,
        }
    }

    #[test]
    fn programs_inside_the_plugin_dir_resolve() {
        let d = dirs();
        let canon = d.plugins.canonicalize().unwrap();
        assert_eq!(
            resolve("voice", false, &d.plugins).unwrap(),
            canon.join("voice")
        );
        assert_eq!(
            resolve("./sub/tool", false, &d.plugins).unwrap(),
            canon.join("sub/tool")
        );
        assert_eq!(
            resolve("link-in", false, &d.plugins).unwrap(),
            canon.join("voice")
        );
        assert_eq!(
            resolve("relative-in", false, &d.plugins).unwrap(),
            canon.join("sub/tool")
        );
    }

    #[test]
    fn escaping_programs_are_refused() {
        let d = dirs();
        for program in [
            "../outside/evil",
            "sub/../voice",
            "link-out",
            "dir-out/evil",
        ] {
            let r = resolve(program, false, &d.plugins);
            assert_eq!(code(r), ErrorCode::InvalidArgument, "{program}");
        }
        let abs = d.outside.join("evil");
        let abs = abs.to_str().unwrap();
        let err = resolve(abs, false, &d.plugins).unwrap_err();
        assert!(
            err.to_string().contains("is outside the plug-in directory"),
            "{err}"
        );
        assert!(
            resolve(abs, true, &d.plugins).is_ok(),
            "the admin may name any path"
        );
        assert!(
            resolve("link-out", true, &d.plugins).is_err(),
            "relative stays inside"
        );
    }

    #[test]
    fn missing_and_unrunnable_programs_say_so() {
        let d = dirs();
        let err = resolve("p2p-voice", false, &d.plugins).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "program \"p2p-voice\" not found in the plug-in directory {} (install it there)",
                d.plugins.display()
            )
        );
        assert_eq!(code(Err(err)), ErrorCode::NotFound);
        assert_eq!(
            code(resolve("/no/such/program", true, &d.plugins)),
            ErrorCode::NotFound
        );
        let nowhere = d.plugins.join("missing-dir");
        assert_eq!(code(resolve("voice", false, &nowhere)), ErrorCode::NotFound);
        assert_eq!(
            code(resolve("plain", false, &d.plugins)),
            ErrorCode::FailedPrecondition
        );
        assert_eq!(
            code(resolve("sub", false, &d.plugins)),
            ErrorCode::FailedPrecondition
        );
        assert_eq!(
            code(resolve("voice/x", false, &d.plugins)),
            ErrorCode::NotFound
        );
    }
}
