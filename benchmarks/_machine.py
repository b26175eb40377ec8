"""What machine a benchmark ran on (shared by every script in benchmarks/)."""

import os
import platform
import sys


def _cpuinfo_line(prefix):
    try:
        with open("/proc/cpuinfo") as f:
            return next((l.split(":", 1)[1].strip() for l in f if l.startswith(prefix)), "")
    except OSError:
        return ""


def cpu_name():
    """The CPU model name (from /proc/cpuinfo where available)."""
    return _cpuinfo_line("model name") or platform.processor() or platform.machine()


def machine_info():
    """CPU, cores, SIMD flags, platform, Python and the load average at the start."""
    flags = _cpuinfo_line("flags").split()
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpu": cpu_name(), "cpu_model": cpu_name(), "logical_cores": os.cpu_count(),
            "simd": [f for f in ("avx2", "avx512f", "avx512_vnni", "fma") if f in flags],
            "platform": platform.platform(), "python": sys.version.split()[0],
            "load_average_at_start": load}
