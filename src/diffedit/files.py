"""Writing files safely: image formats and output paths checked before any work, and atomic writes of one
file or of a set of files (all or none), created with the user's umask.

`check_outputs` is what a command runs before loading a model: every path has a known suffix whose format can
hold the image (an RGB edit, an "L" mask) at its size, is not a folder, lies in a folder that exists or can be
made and can be written, and no output lands on an input (unless allowed) or on another output.
`write_files` writes each file to a hidden temporary beside its target and moves them all into place only once
every one is written; a failure removes the temporaries and puts back any file it had already replaced.
"""

from __future__ import annotations

import io
import os
import secrets
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

__all__ = ["OutputFile", "image_format", "check_outputs", "write_files", "atomic_write", "file_mode"]

# formats an edit may be saved in: they keep every pixel of an RGB or L image at its size (GIF and JPEG lossily)
WRITABLE = {"PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF", "TGA", "JPEG2000", "PPM"}
MAX_SIDE = {"JPEG": 65500, "WEBP": 16383, "GIF": 65535, "TGA": 65535, "PPM": 2**31 - 1}
SUFFIXES_BY_MODE = {".pbm": {"1"}, ".pgm": {"L", "1"}}  # PPM's narrower suffixes
NAME_MAX = 255


def file_mode() -> int:
    """Permissions of a new file under the current umask (0o666 & ~umask), as open() would create it."""
    try:
        with open("/proc/self/status") as f:  # Linux: read without changing it
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def image_format(path: str | os.PathLike, mode: str = "RGB", size: tuple[int, int] | None = None) -> str:
    """PIL's format name for writing a `mode` image of `size` (W, H) at `path`, or a ValueError saying why not."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not suffix:
        raise ValueError(f"{path} has no file extension: name the image format (.png, .jpg, .webp ...)")
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None:
        raise ValueError(f"unknown image format for {path} (use .png, .jpg, .webp ...)")
    if fmt not in WRITABLE or mode not in SUFFIXES_BY_MODE.get(suffix, {mode}):
        raise ValueError(f"{path}: {suffix} files cannot hold this {mode} image; use .png, .jpg, .webp, .tif or .bmp")
    try:  # the plugin may lack its library (WebP, JPEG 2000) or refuse the mode
        Image.new(mode, (16, 16)).save(io.BytesIO(), format=fmt)
    except Exception as e:
        raise ValueError(f"{path}: cannot write {mode} images as {fmt} here ({e}); use .png") from e
    if size is not None and max(size) > MAX_SIDE.get(fmt, 2**31 - 1):
        raise ValueError(f"{path}: {fmt} holds at most {MAX_SIDE[fmt]} pixels a side, the image is {size[0]}x{size[1]}; use .png")
    return fmt


@dataclass(frozen=True)
class OutputFile:
    """One file a command will write: its path, what it is (for messages), and for images the mode and size."""

    path: Path
    what: str  # "output", "mask", "panel", "sidecar" ...
    mode: str | None = None  # "RGB" / "L" for images; None for other files
    size: tuple[int, int] | None = None


def _key(path: Path) -> str:
    return os.path.normcase(os.path.realpath(path))


def _same(a: Path, b: Path) -> bool:
    if _key(a) == _key(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def _check_writable(out: OutputFile) -> None:
    """A ValueError unless `out.path` can be created or replaced: not a folder, in a writable folder."""
    path = out.path
    if len(os.fsencode(path.name)) > NAME_MAX:
        raise ValueError(f"{out.what} file name is too long ({len(os.fsencode(path.name))} bytes, at most {NAME_MAX}): {path}")
    if path.is_dir():
        raise ValueError(f"{out.what} {path} is a folder: give a file name")
    if path.exists() and not path.is_file():
        raise ValueError(f"{out.what} {path} exists and is not a regular file")
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"cannot write {out.what} {path}: {folder} is a file, not a folder")
    try:  # a real probe: permissions, read-only file systems, ACLs and quotas all show
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".diffedit-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"cannot write {out.what} {path}: folder {folder} is not writable ({e.strerror or e})") from e


def check_outputs(
    outputs: Sequence[OutputFile], inputs: Sequence[str | os.PathLike | None] = (), *, overwrite: bool = False
) -> list[Path]:
    """Check every output before the work (see the module's docstring); return the paths that exist already, which
    `write_files` will replace. `inputs` may hold None (an absent input); `overwrite` allows writing over them."""
    existing = []
    for i, out in enumerate(outputs):
        try:
            if out.mode is not None:
                image_format(out.path, out.mode, out.size)
            _check_writable(out)
            for other in outputs[:i]:
                if _same(out.path, other.path):
                    raise ValueError(f"{other.what} and {out.what} would both be written to {out.path}: give them other names")
            for source in inputs:
                if source is not None and _same(out.path, Path(source)) and not overwrite:
                    raise ValueError(f"{out.what} {out.path} is an input of this command: give another name, or pass --overwrite")
            if out.path.exists():
                existing.append(out.path)
        except OSError as e:  # a loop of links, a path the system refuses
            raise ValueError(f"cannot write {out.what} {out.path}: {e.strerror or e}") from e
    return existing


def _temporary(path: Path, tag: str = "part") -> str:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:64]}.", suffix=f".{tag}")
    os.close(fd)
    return tmp


def _make_folders(folder: Path, made: list[Path]) -> None:
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for f in reversed(missing):
        f.mkdir()
        made.append(f)


def _keep(path: Path) -> str | None:
    """A hidden second name for an existing file, so that it can be put back; None when there is none."""
    if not path.exists():
        return None
    backup = str(path.parent / f".{path.name[:64]}.{secrets.token_hex(6)}.old")
    try:
        os.link(path, backup)  # the file stays in place until the new one replaces it
    except OSError:  # no hard links here: move it aside
        os.replace(path, backup)
    return backup


def write_files(files: Sequence[tuple[str | os.PathLike, Callable[[str], None]]]) -> list[Path]:
    """Write a set of files, all or none: each `write(temporary_path)` runs first, then every file is moved into
    place. A failure (or an interrupt) removes the temporaries and folders it made and restores what it replaced."""
    mode, temps, made, moved = file_mode(), [], [], []
    try:
        for target, write in files:
            path = Path(target)
            _make_folders(path.parent, made)
            temps.append((_temporary(path), path))
            write(temps[-1][0])
            os.chmod(temps[-1][0], mode)
        for tmp, path in temps:
            moved.append((path, _keep(path)))
            os.replace(tmp, path)
    except BaseException:
        for path, backup in reversed(moved):
            try:
                os.replace(backup, path) if backup else os.unlink(path)
            except OSError:
                pass
        for tmp, _ in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)
        for folder in reversed(made):
            try:
                folder.rmdir()
            except OSError:
                pass
        raise
    for _, backup in moved:
        if backup:
            os.unlink(backup)
    return [path for _, path in temps]


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Write one file atomically: a half-written file never replaces a good one."""
    return write_files([(path, write)])[0]
