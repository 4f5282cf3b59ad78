"""Memory of the web server under the worst variant requests a stranger can make (issue 13).

Run: .venv/bin/python bench/bench_abuse.py   (about 20 s; loopback only)

The issue's upload, a 2×12,000 PNG, is stored first; then ``python -m bot serve`` runs as its
own process and receives anonymous variant requests, one at a time: the worst ones the bounds
allow (4096×4096 pad and cover) and the ones they refuse (the issue's ``w=400,fit=cover`` that
made a 400×2,400,000 PNG and 1.1 GB of memory, and ``w=4096,fit=contain``). For each request
the server's peak RSS is reset (``/proc/PID/clear_refs``) and read afterwards (``VmHWM``): the
growth over the RSS before it is the figure (target: under 100 MB each). Then a burst of 8
distinct worst variants at once (the pool renders VARIANT_WORKERS of them at a time).
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.config import load_settings  # noqa: E402
from bot.runtime import open_runtime  # noqa: E402

WORST_ALLOWED = ["w=4096,h=4096,fit=pad", "w=4096,h=4096,fit=cover", "w=4096,h=4096,fit=contain"]
REFUSED = ["w=400,fit=cover", "w=4096,fit=contain", "w=400"]
TARGET_MB = 100


def tall_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (2, 12_000), "purple").save(out, "PNG")
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for {pid}")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux ≥ 4.0)


async def wait_until_up(http: httpx.AsyncClient, process: asyncio.subprocess.Process) -> None:
    for _ in range(600):
        if process.returncode is not None:
            raise RuntimeError("the server exited")
        try:
            if (await http.get("/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError("the server did not start")


async def measure(http: httpx.AsyncClient, pid: int, paths: list[str]) -> tuple[float, set[int]]:
    """Peak RSS growth (MB) while ``paths`` are fetched at once, and the statuses seen."""
    await asyncio.sleep(0.2)  # let the previous request's memory settle
    before = status_mb(pid, "VmRSS")
    reset_peak(pid)
    answers = await asyncio.gather(*(http.get(path) for path in paths))
    return status_mb(pid, "VmHWM") - before, {a.status_code for a in answers}


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        env = {"DATA_DIR": folder, "WEB_HOST": "127.0.0.1", "WEB_PORT": str(port)}
        async with open_runtime(load_settings(env)) as runtime:
            record = await runtime.service.upload(tall_png(), user_id="bench")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "serve",
            cwd=folder,
            env={"PATH": os.environ.get("PATH", ""), "HOME": folder, "PYTHONPATH": str(ROOT),
                 **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base, timeout=120.0) as http:
                await wait_until_up(http, process)
                print(f"server RSS at rest: {status_mb(process.pid, 'VmRSS'):.1f} MB")
                worst = 0.0
                for variant in WORST_ALLOWED + REFUSED:
                    growth, statuses = await measure(
                        http, process.pid, [f"/images/{record.id}/{variant}"]
                    )
                    worst = max(worst, growth)
                    print(f"{variant:<28} status {sorted(statuses)}  RSS growth {growth:6.1f} MB")
                burst = [f"/images/{record.id}/w=4096,h={4096 - n},fit=pad" for n in range(8)]
                growth, statuses = await measure(http, process.pid, burst)
                print(f"burst of 8 distinct pads       status {sorted(statuses)}  "
                      f"RSS growth {growth:6.1f} MB")  # fmt: skip
                verdict = "ok" if worst < TARGET_MB else "OVER TARGET"
                print(f"worst single request: {worst:.1f} MB (target < {TARGET_MB} MB): {verdict}")
        finally:
            process.terminate()
            await asyncio.wait_for(process.wait(), 30)


if __name__ == "__main__":
    asyncio.run(main())
