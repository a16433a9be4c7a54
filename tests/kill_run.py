"""A ``--resume`` run that SIGKILLs itself at a chosen point (for tests/test_resume.py).

    python -m tests.kill_run POINT N SRC DST TYPES [JSON-OPTIONS]

POINT is where the process dies, the N-th time it gets there (counted over every output file):
``header`` (half the header written), ``inside`` (half a data write of a tensor written), ``between``
(after a tensor and its journal line are durable), ``journal`` (a tensor's bytes fsync'ed, its journal line
not written), ``torn-journal`` (half a journal line written), ``before-rename`` / ``after-rename`` (around
the rename of a finished file into place).
"""
from __future__ import annotations

import json
import os
import signal
import sys

from gpuquant import resume
from gpuquant.outputs import quantize_files

COUNT = {"n": 0}


def _reached(point: str, want: str, n: int) -> bool:
    if point != want:
        return False
    COUNT["n"] += 1
    return COUNT["n"] == n


def _die(f=None) -> None:
    if f is not None:
        f.flush()
        os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str, n: int) -> None:
    W = resume.ResumeWriter
    write, tensor_done, replace = W.write, W.tensor_done, os.replace

    def patched_write(self, data):
        mv = memoryview(data).cast("B")
        kind = "header" if self.bytes_written == 0 else "inside"
        if mv.nbytes > 1 and _reached(kind, point, n):
            self._f.write(mv[: mv.nbytes // 2])
            _die(self._f)
        return write(self, data)

    def patched_tensor_done(self, index):
        if _reached("journal", point, n):
            _die(self._f)
        if _reached("torn-journal", point, n):
            self._f.flush()
            os.fsync(self._f.fileno())
            with open(self.journal, "a") as j:
                j.write('{"t": %d, "end": %d, "cr' % (index, self.bytes_written))
                _die(j)
        tensor_done(self, index)
        if _reached("between", point, n):
            _die()

    def patched_replace(a, b):
        partial = str(a).endswith(".gpuquant-resume")
        if partial and _reached("before-rename", point, n):
            _die()
        replace(a, b)
        if partial and _reached("after-rename", point, n):
            _die()

    W.write, W.tensor_done = patched_write, patched_tensor_done
    resume.os.replace = patched_replace


def main(argv: list[str]) -> int:
    point, n, src, dst, types = argv[:5]
    options = json.loads(argv[5]) if len(argv) > 5 else {}
    install(point, int(n))
    job = quantize_files(src, dst, types, resume=True, **options)
    print(json.dumps({"errors": [r.error for r in job.reports]}))
    return 3  # not killed: the point was never reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
