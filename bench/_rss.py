"""Run a job module's ``main(argv)`` in this process and report its peak RSS (VmHWM).

    python -m bench._rss MODULE [ARGS...] --result FILE
"""

from __future__ import annotations

import importlib
import sys
import time

from bench.common import write_result


def main() -> int:
    argv = sys.argv[1:]
    result_path = None
    if "--result" in argv:
        i = argv.index("--result")
        result_path = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    module, args = argv[0], argv[1:]
    mod = importlib.import_module(module)
    t = time.perf_counter()
    code = mod.main(args)
    write_result(result_path, {"module": module, "args": args, "exit_code": code,
                               "seconds": time.perf_counter() - t})
    return 0 if code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
