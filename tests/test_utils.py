"""utils.atomic_path: a file appears at its final path complete or not at all."""
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import removalnet
from removalnet.utils import atomic_path, atomic_write_bytes

CHUNK = b"x" * (1 << 16)


def test_atomic_path_success_writes_complete_file_with_normal_permissions(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with atomic_path(target) as tmp:
        assert tmp != target and tmp.parent == target.parent
        tmp.write_bytes(CHUNK * 3)
        assert not target.exists()                          # nothing at the final path before the end
    assert target.read_bytes() == CHUNK * 3
    assert os.listdir(target.parent) == ["out.bin"]          # no temporary left behind
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_path_exception_halfway_leaves_old_file_and_no_partial(tmp_path):
    old, new = tmp_path / "old.bin", tmp_path / "new.bin"
    atomic_write_bytes(old, b"previous content")
    for target in (old, new):
        with pytest.raises(RuntimeError, match="halfway"):
            with atomic_path(target) as tmp, open(tmp, "wb") as f:
                f.write(CHUNK)
                f.flush()
                raise RuntimeError("failed halfway")
    assert old.read_bytes() == b"previous content"
    assert not new.exists()
    assert sorted(os.listdir(tmp_path)) == ["old.bin"]


def test_atomic_path_killed_process_leaves_old_file_and_no_partial(tmp_path):
    old, new = tmp_path / "old.bin", tmp_path / "new.bin"
    atomic_write_bytes(old, b"previous content")
    child = textwrap.dedent(f"""
        import os, sys, time
        from removalnet.utils import atomic_path
        with atomic_path({str(old)!r}) as a, atomic_path({str(new)!r}) as b, open(a, "wb") as fa, open(b, "wb") as fb:
            for f in (fa, fb):
                f.write(b"x" * (1 << 20))
                f.flush()
                os.fsync(f.fileno())
            print("halfway", flush=True)
            time.sleep(60)
            fa.write(b"end")
            fb.write(b"end")
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(removalnet.__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline().strip() == b"halfway"
        sizes = sorted(p.stat().st_size for p in tmp_path.iterdir())
        assert sizes.count(1 << 20) == 2                     # both writes are on disk, half done
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert old.read_bytes() == b"previous content"
    assert not new.exists()
