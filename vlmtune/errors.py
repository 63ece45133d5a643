"""Errors a user can fix, and how every command reports them: one `error: <message>` line, exit code 1, no traceback.

Each error names what to fix (a file and line, a sample id, a config key, a checkpoint or a package) and says what to
do. Anything else is a bug and keeps its traceback; `VLMTUNE_DEBUG=1` shows the traceback of user errors too. The
classes also derive from the built-in exception a caller would expect (ValueError, ImportError, ...), so code that
catches those keeps working. Kept free of heavy imports: every recipe imports it before Hydra runs.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


class VlmtuneError(Exception):
    """An error the user can fix; its message says what and how."""

    exit_code = 1
    __str__ = Exception.__str__  # the message as given, also beside KeyError-like bases that quote it


class ConfigError(VlmtuneError, ValueError):
    """A config value that cannot work (names the key and the valid values)."""


class PolicyError(ConfigError):
    """A training policy that cannot be honoured (names the part and the modules)."""


class DataError(VlmtuneError, ValueError):
    """Bad input data; the message names the file (and line) and sample and says what to do."""

    def __init__(self, message: str, kind: str = "invalid_sample"):
        super().__init__(message)
        self.kind = kind  # e.g. missing_image, corrupt_image, placeholder_mismatch: the data report's row


class CheckpointError(VlmtuneError, ValueError):
    """A checkpoint directory that cannot be loaded as asked (missing, incomplete, wrong kind)."""


class MissingDependency(VlmtuneError, ImportError):
    """An optional package a feature needs is not installed (names the pip extra)."""

    def __init__(self, feature: str, package: str, extra: str | None = None):
        install = f'pip install -e ".[{extra}]"' if extra else f"pip install {package}"
        super().__init__(f"{feature} needs the {package} package, which is not installed: {install}")


def require(module: str, extra: str, feature: str) -> None:
    """Raise MissingDependency (naming `extra`) unless `module` can be imported; nothing is imported."""
    import importlib.util

    if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
        raise MissingDependency(feature, module, extra)


class TrainingStopped(VlmtuneError, RuntimeError):
    """Training was stopped by a guard (non-finite loss, a part that cannot learn, a batch with nothing to learn)."""


DEBUG_ENV = "VLMTUNE_DEBUG"  # set to 1 to see the traceback of a user error


def _user_message(error: BaseException) -> str | None:
    """The message to print for an error the user can fix, or None for a bug (which keeps its traceback)."""
    if isinstance(error, VlmtuneError):
        return str(error)
    try:  # Hydra composition: an unknown config group option, a bad override, a value of the wrong type
        from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    except ImportError:  # pragma: no cover - hydra is a dependency
        return None
    if isinstance(error, (ConfigCompositionException, MissingConfigException, OverrideParseException)):
        cause = error.__cause__
        text = f"{error} ({cause})" if cause is not None and str(cause) not in str(error) else str(error)
        # OmegaConf appends its bookkeeping (full_key, reference_type, object_type) on lines of their own.
        text = re.sub(r"\n\s*(full_key: [^\n]*|reference_type=[^\n]*|object_type=[^)\n]*)", "", text)
        return re.sub(r"\s*\n\s*", " ", text).strip()
    return None


def _launch_marker_dir() -> Path | None:
    """A folder shared by the processes of one multi-process launch on this machine (None for a single process):
    where they note the errors already printed, so each is printed once."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    launch = ":".join([os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", ""),
                       os.environ.get("TORCHELASTIC_RUN_ID", ""), str(os.getppid())])
    path = Path(tempfile.gettempdir()) / "vlmtune-errors" / hashlib.sha256(launch.encode()).hexdigest()[:16]
    path.mkdir(parents=True, exist_ok=True)
    return path


def _first_to_report(message: str) -> bool:
    """True in the one process of a launch that prints `message` (every process in a single-process run)."""
    folder = _launch_marker_dir()
    if folder is None:
        return True
    try:
        fd = os.open(folder / hashlib.sha256(message.encode()).hexdigest()[:16], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def _another_process_reported() -> bool:
    folder = _launch_marker_dir()
    return folder is not None and any(folder.iterdir())


def _exit(code: int) -> None:
    """Leave now. With a process group up, skip interpreter teardown: gloo threads (and peers already gone) can hang
    or abort it."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            os._exit(code)
    except ImportError:  # pragma: no cover
        pass
    sys.exit(code)


class _HeldJobLine:
    """stderr, holding back Hydra's "Error executing job with overrides: [...]" (written just before it re-raises a
    job's exception): a user error is then one `error:` line; a bug gets the line back above its traceback."""

    PREFIX = "Error executing job with overrides:"

    def __init__(self, stream) -> None:
        self.stream = stream
        self.held: list[str] = []

    def write(self, text: str) -> int:
        if text.startswith(self.PREFIX):
            self.held.append(text)
            return len(text)
        return self.stream.write(text)

    def release(self) -> None:
        for text in self.held:
            self.stream.write(text)
        self.held.clear()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def run_command(main: Callable[[], Any]) -> Any:
    """Run a command's `main`: a user error prints `error: <message>` (once per launch) and exits 1 with no
    traceback; any other exception keeps its traceback, except a collective that fails because another process
    already stopped with a user error (then this process exits 1 quietly)."""
    # Hydra would print its own abridged traceback and a hint about HYDRA_FULL_ERROR; let errors reach us instead.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    stderr = sys.stderr = _HeldJobLine(sys.stderr)
    try:
        return main()
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        _exit(130)
    except BaseException as error:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            stderr.release()
            raise
        message = _user_message(error)
        if message is None:
            if _another_process_reported():  # e.g. gloo's "connection closed by peer" after a rank's user error
                _exit(1)
            stderr.release()
            raise
        if _first_to_report(message):
            print(f"error: {message}", file=sys.stderr)
        _exit(getattr(error, "exit_code", 1))
    finally:
        sys.stderr = stderr.stream
