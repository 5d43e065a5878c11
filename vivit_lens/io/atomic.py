"""Output folders that are complete or absent: written into a temporary folder beside the target, moved into
place only when everything is written.

    out = OutputFolder("report/", overwrite=False)    # checks the target now, before any compute
    write_everything(out.tmp)                          # a crash or Ctrl-C here leaves no "report/"
    out.commit()                                       # then out.discard() in a finally: a no-op once committed
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path


class OutputError(ValueError):
    """An output location that cannot be written, or that would replace something it should not."""


def _contains(folder: Path, path: Path) -> bool:
    return path == folder or folder in path.parents


class OutputFolder:
    """The target folder, validated, and the temporary folder beside it that the output is written into.

    A non-empty target is refused unless `overwrite`; with it, the old folder is replaced only in
    `commit`, after the new one is complete. A target that holds the working directory or any of
    `protect` (the inputs) is never replaced.
    """

    def __init__(self, target: str | Path, *, overwrite: bool = False, protect: Iterable[str | Path] = (),
                 flag: str = "--overwrite") -> None:  # fmt: skip
        self.target = Path(target).expanduser().absolute()
        self.tmp: Path | None = None
        self._check(overwrite, [Path(p).expanduser().absolute() for p in protect], flag)
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.partial-", dir=self.target.parent))
        except OSError as e:
            raise OutputError(f"cannot write into {self.target.parent} ({e.strerror or e})") from None

    def _check(self, overwrite: bool, protect: list[Path], flag: str) -> None:
        t = self.target
        if t.exists() and not t.is_dir():
            raise OutputError(f"{t} is a file; the output must be a folder")
        for parent in t.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise OutputError(f"cannot create {t}: {parent} is a file, not a folder")
                if not os.access(parent, os.W_OK | os.X_OK) and not t.exists():
                    raise OutputError(f"cannot write into {parent} (permission denied)")
                break
        if t.is_dir() and any(t.iterdir()):
            if not overwrite:
                raise OutputError(f"{t} exists and is not empty; pass {flag} to replace it, or choose a new folder")
            if not os.access(t.parent, os.W_OK | os.X_OK):
                raise OutputError(f"cannot replace {t}: {t.parent} is not writable")
            held = [p for p in [Path.cwd(), *protect] if _contains(t.resolve(), p.resolve())]
            if held:
                raise OutputError(f"refusing to replace {t}: it holds {held[0]}")

    def final(self, path: str | Path) -> Path:
        """Where a file written under `tmp` ends up after `commit`."""
        return self.target / Path(path).relative_to(self.tmp)

    def commit(self) -> Path:
        """Move the finished folder into place (replacing the old one, if any); returns the target."""
        old = None
        if self.target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.old-", dir=self.target.parent))
            os.replace(self.target, old / self.target.name)
        try:
            os.replace(self.tmp, self.target)
        except BaseException:
            if old is not None:
                os.replace(old / self.target.name, self.target)
            raise
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        self.tmp = None
        return self.target

    def discard(self) -> None:
        """Remove the temporary folder (nothing half-written stays behind); a no-op after `commit`."""
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None




def write_text(path: str | Path, text: str) -> Path:
    """Write one file complete or not at all: into a temporary file beside it, then renamed into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent if str(path.parent) else ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


__all__ = ["OutputError", "OutputFolder", "write_text"]
