"""Checkpoints that a crash, a full disk or a damaged file cannot turn into a wrong resume.

Layout under <out>/checkpoints/:
    step-000020/      model.pt, optimizer.pt, state.pt (step, data position, scheduler, RNG states),
                      manifest.json (the step, the id of the run it belongs to, and the size and
                      sha256 of each of those files; written last)
    latest -> step-000020   a symlink, replaced atomically
A checkpoint is written into `step-N.tmp/`, fsynced, its manifest added, renamed to `step-N/`
(atomic within a file system), and only then does `latest` move to it (a new symlink renamed over
the old one, also atomic). A crash at any point leaves `latest` naming a complete checkpoint; a
failed save (a full disk) removes its `.tmp` folder and raises `RunFileError` naming the file;
stray `.tmp` folders are removed by the next save. Older checkpoints beyond `keep` (at least 2) are
deleted after `latest` moves, so the previous one is always there to fall back to.

Loading verifies the manifest (well-formed, naming only plain files inside its folder, every file
present, of the recorded size and checksum) and that the checkpoint belongs to the run being
resumed (its run id is the one in the output directory's config.json): another run's checkpoint
never continues this one. A damaged checkpoint is reported in one line and the previous kept one
is used instead; when none is usable, `CheckpointError` says why in one line.

A data-parallel run (distributed.py) writes the model and optimiser state with
torch.distributed.checkpoint instead: `dcp/` holds each rank's shard files and `.metadata`, written
by every rank into the same `step-N.tmp/`; rank 0 then writes state.pt and the manifest (covering
every file, `"format": "dcp"`) and moves the folder and `latest` as above, so the guarantees are the
same (the output directory must be one file system that every rank sees). Either format resumes on
any number of processes: DCP reshards on load, and a single-process checkpoint is split on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from .files import RunFileError, reason

MANIFEST = "manifest.json"
FILES = ("model.pt", "optimizer.pt", "state.pt")
DCP_DIR = "dcp"
REQUIRED = {"torch": FILES, "dcp": ("state.pt", f"{DCP_DIR}/.metadata")}  # manifest "format" -> files it must list


class CheckpointError(Exception):
    """No usable checkpoint; the message is one line that says which were tried and why each failed."""


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_step_name(name: str) -> bool:
    return name.startswith("step-") and name[5:].isdigit() and name[5:].isascii()


def checkpoint_dirs(root: Path) -> list[Path]:
    """The candidates to resume from, newest first: `latest`'s target, then every other step-N
    folder (real folders only: a `latest` or step-N that is a link out of `root` is not followed)."""
    steps = sorted((p for p in root.glob("step-*") if _is_step_name(p.name) and p.is_dir() and not p.is_symlink()),
                   key=lambda p: p.name, reverse=True)
    latest = root / "latest"
    target = os.readlink(latest) if latest.is_symlink() else ""
    first = [root / target] if _is_step_name(target) else []
    return first + [p for p in steps if not first or p.name != first[0].name]


def _begin(root: Path, tmp: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for stray in root.glob("*.tmp"):
        shutil.rmtree(stray, ignore_errors=True)
    tmp.mkdir()


def _record(path: Path) -> dict:
    """fsyncs `path`; its manifest entry (size, sha256)."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
    return {"size": path.stat().st_size, "sha256": _sha256(path)}


def _commit(root: Path, tmp: Path, final: Path, manifest: dict) -> Path:
    """Manifest last, then tmp -> final and `latest` -> final, each atomic; returns the path being
    written when it fails (through the exception's `.path`)."""
    current = tmp / MANIFEST
    try:
        with open(tmp / (MANIFEST + ".tmp"), "w", encoding="utf-8") as fh:
            fh.write(json.dumps(manifest, indent=1))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp / (MANIFEST + ".tmp"), current)
        _fsync_dir(tmp)
        current = final
        if final.exists():  # a re-run of the same step (after a resume): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        current = root / "latest"
        link_tmp = root / "latest.tmp"
        if link_tmp.is_symlink() or link_tmp.exists():
            link_tmp.unlink()
        os.symlink(final.name, link_tmp)
        os.replace(link_tmp, root / "latest")
        _fsync_dir(root)
    except (OSError, RuntimeError) as e:
        e.path = current
        raise
    return final


def _failed(root: Path, tmp: Path, current: Path, e: BaseException) -> RunFileError:
    why = reason(e, current)  # before the partial checkpoint is removed (it shows the disk full)
    shutil.rmtree(tmp, ignore_errors=True)
    kept, _ = usable(root) if root.is_dir() else (None, [])
    hint = (f"; the last good checkpoint ({kept.name}) is intact: make room and continue with --resume"
            if kept is not None else "; no usable checkpoint was written before")
    return RunFileError(f"cannot write {current}: {why}{hint}")


def _prune(root: Path, final: Path, keep: int) -> None:
    steps = sorted(p for p in root.glob("step-*") if _is_step_name(p.name) and p.is_dir() and not p.is_symlink())
    for old in steps[:-keep]:
        if old.resolve() != final.resolve():
            shutil.rmtree(old, ignore_errors=True)


def _state(step: int, scheduler, extra: dict) -> dict:
    return {"step": step, "scheduler": scheduler.state_dict(), "rng": rng_state(), **extra}


def save(root: Path, step: int, model, optimizer, scheduler, extra: dict, keep: int = 2, dist=None,
         run: str | None = None) -> Path:
    """Writes checkpoint step-N (see the module doc), its manifest naming `run` (the run it belongs
    to). With `dist` (a distributed.Dist of a launched run), every rank must call it: the sharded format."""
    named = {} if run is None else {"run": run}
    if dist is not None and dist.enabled:
        return _save_sharded(root, step, model, optimizer, scheduler, extra, keep, dist, named)
    keep = max(2, keep)
    final = root / f"step-{step:06d}"
    tmp = root / f"step-{step:06d}.tmp"
    current = root
    try:
        _begin(root, tmp)
        objects = {"model.pt": model.state_dict(), "optimizer.pt": optimizer.state_dict(),
                   "state.pt": _state(step, scheduler, extra)}
        files = {}
        for name, obj in objects.items():
            current = tmp / name
            torch.save(obj, current)
            files[name] = _record(current)
        _commit(root, tmp, final, {"step": step, **named, "files": files})
    except (OSError, RuntimeError) as e:  # RuntimeError: torch.save's writer on a full disk
        raise _failed(root, tmp, getattr(e, "path", current), e) from None
    _prune(root, final, keep)
    return final


def _save_sharded(root: Path, step: int, model, optimizer, scheduler, extra: dict, keep: int, dist,
                  named: dict) -> Path:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from . import distributed

    keep = max(2, keep)
    final = root / f"step-{step:06d}"
    tmp = root / f"step-{step:06d}.tmp"
    error = None
    current = root
    if dist.main:
        try:
            _begin(root, tmp)
        except OSError as e:
            error = str(_failed(root, tmp, current, e))
    error = distributed.broadcast(error, dist)
    if error is not None:
        raise RunFileError(error)
    model_state, optim_state = get_state_dict(model, optimizer)
    try:
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp / DCP_DIR))
        error = None
    except Exception as e:  # noqa: BLE001 - DCP wraps each rank's failure in its own exception type
        error = f"cannot write {tmp / DCP_DIR}: {reason(e, tmp / DCP_DIR)}"
    errors = [e for e in distributed.gather_lists([error], dist) if e is not None]
    if not errors and dist.main:
        current = tmp / "state.pt"
        try:
            torch.save(_state(step, scheduler, extra), current)
            files = {"state.pt": _record(current)}
            for path in sorted((tmp / DCP_DIR).iterdir()):
                current = path
                files[f"{DCP_DIR}/{path.name}"] = _record(path)
            _commit(root, tmp, final, {"step": step, "format": "dcp", "world_size": dist.world_size, **named,
                                       "files": files})
            _prune(root, final, keep)
        except (OSError, RuntimeError) as e:
            errors = [str(_failed(root, tmp, getattr(e, "path", current), e))]
    elif errors and dist.main:
        shutil.rmtree(tmp, ignore_errors=True)
    errors = distributed.broadcast(errors, dist)
    if errors:
        raise RunFileError(errors[0])
    return final


_VERIFIED: dict[tuple, str | None] = {}  # (folder, file stats) -> problem, so a check is not repeated


class ManifestProblem(Exception):
    """Why a checkpoint's manifest cannot be trusted (one phrase)."""


_HEX = set("0123456789abcdef")


def _entry_path(folder: Path, name) -> Path:
    """The file a manifest entry names, which must be a plain relative path inside `folder`: no
    absolute path, no `..`, no symlink on the way (a manifest is data read back from disk, so it must
    not make the loader open or hash a file outside the checkpoint)."""
    if not isinstance(name, str) or not name or "\x00" in name or "\\" in name:
        raise ManifestProblem(f"{MANIFEST} lists an invalid file name {str(name)[:60]!r}")
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ManifestProblem(f"{MANIFEST} lists {name[:60]!r}, which is not a plain path inside the checkpoint")
    path = folder
    for p in parts:
        path = path / p
        if path.is_symlink():
            raise ManifestProblem(f"{name[:60]} is a symbolic link (a checkpoint holds plain files only)")
    return path


def read_manifest(folder: Path) -> dict:
    """The manifest of the checkpoint in `folder`, checked for shape and types (ManifestProblem when
    it is missing, unreadable or malformed): {"step": int, "format": "torch" | "dcp", "run": str
    (absent in checkpoints written before runs were named), "files": {name: {"size": int, "sha256": hex}}}."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestProblem(f"no {MANIFEST} (an unfinished or damaged checkpoint)") from None
    except (OSError, UnicodeDecodeError, ValueError):
        raise ManifestProblem(f"{MANIFEST} is unreadable") from None
    if not isinstance(manifest, dict):
        raise ManifestProblem(f"{MANIFEST} is not a JSON object")
    step, fmt, files = manifest.get("step"), manifest.get("format", "torch"), manifest.get("files")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ManifestProblem(f"{MANIFEST} has no valid step")
    if not isinstance(fmt, str) or fmt not in REQUIRED:
        raise ManifestProblem(f"{MANIFEST} names an unknown format {str(fmt)[:40]!r}")
    if "run" in manifest and not isinstance(manifest["run"], str):
        raise ManifestProblem(f"{MANIFEST} has an invalid run id")
    if not isinstance(files, dict) or not files:
        raise ManifestProblem(f"{MANIFEST} lists no files")
    for name, entry in files.items():
        _entry_path(folder, name)
        size, digest = (entry.get("size"), entry.get("sha256")) if isinstance(entry, dict) else (None, None)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not isinstance(digest, str) \
                or len(digest) != 64 or not set(digest) <= _HEX:
            raise ManifestProblem(f"{MANIFEST} has an invalid entry for {name[:60]}")
    for name in REQUIRED[fmt]:
        if name not in files:
            raise ManifestProblem(f"{MANIFEST} does not list {name}")
    return manifest


def problem(folder: Path, run: str | None = None) -> str | None:
    """Why the checkpoint in `folder` cannot be used (one phrase), or None when it verifies. With
    `run` (the run id in the output directory's config.json), a checkpoint of another run (or of
    none) cannot be used either."""
    if not folder.is_dir():
        return "its folder is missing"
    try:
        manifest = read_manifest(folder)
    except ManifestProblem as e:
        return str(e)
    if run is not None and manifest.get("run") != run:
        return (f"it belongs to another run (run id {manifest.get('run', 'none')}, this run's is {run}), so it "
                "cannot continue this one")
    files = manifest["files"]
    stats = []
    for name in sorted(files):
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        st = path.stat()
        if st.st_size != files[name]["size"]:
            return f"{name} has {st.st_size} bytes, its manifest says {files[name]['size']} (truncated or replaced)"
        stats.append((name, st.st_size, st.st_mtime_ns, st.st_ino))
    key = (str(folder.resolve()), tuple(stats), (folder / MANIFEST).stat().st_mtime_ns)
    if key not in _VERIFIED:
        bad = next((name for name in sorted(files) if _sha256(folder / name) != files[name]["sha256"]), None)
        _VERIFIED[key] = None if bad is None else f"{bad} does not match its checksum (the file changed after it was written)"
    return _VERIFIED[key]


def usable(root: Path, run: str | None = None) -> tuple[Path | None, list[str]]:
    """(the newest checkpoint that verifies (and belongs to `run`, when given) or None, one
    'step-N: why' per unusable newer one)."""
    damaged = []
    for folder in checkpoint_dirs(root):
        why = problem(folder, run)
        if why is None:
            return folder, damaged
        damaged.append(f"{folder.name}: {why}")
    return None, damaged


def step_of(folder: Path) -> int:
    return read_manifest(folder)["step"]


def load(root: Path, model, optimizer, scheduler, warn=None, dist=None, run: str | None = None) -> dict:
    """Restores model, optimiser, scheduler and RNG states from the newest checkpoint that verifies;
    returns its state dict (step, ...) with "checkpoint" (the folder) added. Each damaged newer
    checkpoint is reported in one line through `warn` (default: stderr). Either format loads into a
    plain model or, with `dist` (every rank calling), into an FSDP-sharded one."""
    warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
    sharded = dist is not None and dist.enabled
    damaged = []
    for folder in checkpoint_dirs(root):
        why = problem(folder, run)
        if why is None:
            try:
                fmt = read_manifest(folder).get("format", "torch")
                with torch.serialization.safe_globals(_numpy_array_globals()):
                    state = torch.load(folder / "state.pt", weights_only=True)
                if fmt == "torch":
                    weights = torch.load(folder / "model.pt", map_location="cpu" if sharded else _device_of(model),
                                         weights_only=True)
                    opt_state = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - verified but unreadable: treat as damaged
                why = f"unreadable ({str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__})"
        if why is not None:
            damaged.append(f"{folder.name}: {why}")
            warn(f"ia-train: checkpoint {folder} {'cannot be used' if why.startswith('it belongs') else 'is damaged'}: "
                 f"{why}; trying the previous one")
            continue
        try:
            if fmt == "dcp":
                _load_dcp(folder / DCP_DIR, model, optimizer)
            elif sharded:
                _load_full_into_sharded(weights, opt_state, model, optimizer)
            else:
                model.load_state_dict(weights)
                optimizer.load_state_dict(opt_state)
            scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint {folder} does not fit this model and optimiser "
                                  f"({str(e).strip().splitlines()[0][:160]})") from None
        set_rng_state(state["rng"])
        if damaged:
            warn(f"ia-train: resuming from {folder.name} (step {state['step']}) instead")
        state["checkpoint"] = str(folder)
        return state
    raise CheckpointError(f"no usable checkpoint in {root}" + (f" ({'; '.join(damaged)})" if damaged else "")
                          + "; drop --resume to start the run over")


def _numpy_array_globals() -> list:
    """What unpickling a NumPy array needs (its reconstructor, ndarray, dtype, the uint32 dtype's
    class): the only globals in state.pt beyond plain types (NumPy's RNG state), allowed so that it
    loads with weights_only=True. A checkpoint is data: loading one must not run code it names."""
    return [np.zeros(1).__reduce__()[0], np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _load_dcp(path: Path, model, optimizer) -> None:
    """DCP reshards: the files of W ranks load into this process's shards (or the whole tensors of a
    plain model, without a process group)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def _load_full_into_sharded(weights: dict, opt_state: dict, model, optimizer) -> None:
    """A single-process checkpoint (whole tensors; optimiser state keyed by parameter index) into
    an FSDP-sharded model and its optimiser: every rank keeps its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    names = [name for name, _ in model.named_parameters()]
    by_index = lambda i: names[i]  # noqa: E731 - optimizer.state_dict() numbers parameters in this order
    optim = {"state": {by_index(i): value for i, value in opt_state["state"].items()},
             "param_groups": [{**group, "params": [by_index(i) for i in group["params"]]}
                              for group in opt_state["param_groups"]]}
    set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=optim,
                   options=StateDictOptions(full_state_dict=True))


__all__ = ["CheckpointError", "RunFileError", "load", "save", "usable", "problem", "step_of"]
